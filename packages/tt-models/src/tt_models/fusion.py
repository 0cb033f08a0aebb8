"""Images into the decoder: gated cross-attention layers and ``FusionModel`` (Llama 3.2 Vision).

The decoder stays the one ``TransformerDecoder``: a vision model's config lists
``cross_attention_layers``, and those positions of its layer stack hold a
``TransformerCrossAttentionLayer`` instead of a self-attention block. ``FusionModel`` holds the
image encoder and that decoder: it encodes the images once, and each text token attends to the
tokens of the images its ``image_mask`` row names.

``image_mask`` ``[b, s, n_images, max_num_tiles]`` (1: token ``t`` sees that tile of that image)
is what tt_data's collator and transformers' processor build: a token sees the images from
their ``<|image|>`` token on. A row that sees no image skips the cross-attention layers' MLP
(and attends uniformly over the image tokens, as transformers does); a batch without images
skips the cross-attention layers altogether.
"""

from __future__ import annotations

import torch
from torch import nn

from tt_models.decoder import TransformerDecoder
from tt_models.vision import VisionEncoder


class FusionModel(nn.Module):
    """An image encoder and a decoder with cross-attention layers, used like a decoder.

    ``forward`` takes the decoder's arguments plus the images of the batch; ``decode_step``,
    ``logits_from_hidden``, the KV-cache methods and ``config`` are the decoder's, so training
    losses, generation and checkpointing treat it as they treat a ``TransformerDecoder``.
    State-dict keys: ``encoder.*`` and ``decoder.*``.
    """

    def __init__(self, encoder: VisionEncoder, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        # During generation: the image mask row of each sequence's last prompt token, which
        # every generated token repeats (it comes after all of the prompt's images).
        self._decode_mask: torch.Tensor | None = None

    @property
    def config(self):
        return self.decoder.config

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        self.encoder.init_weights(std)
        self.decoder.init_weights(std)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        images: torch.Tensor | None = None,
        aspect_ratio_ids: torch.Tensor | None = None,
        aspect_ratio_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        return_hidden: bool = False,
        check_inputs: bool = True,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (or hidden states) of ``tokens`` ``[b, s]`` given the
        batch's images (shapes in ``tt_models.vision`` and above; all four or none).

        With KV-caches, the prompt's pass (with images) caches the image keys/values of every
        cross-attention layer, and later calls without images reuse them.
        """
        encoder_states = encoder_mask = None
        if images is not None:
            if aspect_ratio_ids is None or aspect_ratio_mask is None or image_mask is None:
                raise ValueError(
                    "FusionModel: images need aspect_ratio_ids, aspect_ratio_mask and "
                    "image_mask too"
                )
            if check_inputs:
                self._check_image_mask(tokens, images, image_mask)
            encoder_states = self.encoder(images, aspect_ratio_ids, aspect_ratio_mask)
            encoder_mask = self._encoder_mask(image_mask)
            if self.decoder.caches_are_enabled():
                self._decode_mask = encoder_mask[:, -1:]
        elif self._decode_mask is not None:
            encoder_mask = self._decode_mask.expand(-1, tokens.shape[1], -1)
        return self.decoder(
            tokens,
            mask=mask,
            input_pos=input_pos,
            return_hidden=return_hidden,
            check_inputs=check_inputs,
            encoder_states=encoder_states,
            encoder_mask=encoder_mask,
        )

    def _encoder_mask(self, image_mask: torch.Tensor) -> torch.Tensor:
        """``[b, s, images, tiles]`` -> bool ``[b, s, images * tiles * n_patches]``."""
        b, s = image_mask.shape[:2]
        per_token = image_mask.bool().repeat_interleave(self.encoder.config.n_patches, dim=-1)
        return per_token.reshape(b, s, -1)

    def _check_image_mask(
        self, tokens: torch.Tensor, images: torch.Tensor, image_mask: torch.Tensor
    ) -> None:
        self.encoder.check_images(images)
        expected = (*tokens.shape, *images.shape[1:3])
        if tuple(image_mask.shape) != expected:
            raise ValueError(
                f"FusionModel: image_mask must be [batch, seq_len, images, tiles] = {expected}, "
                f"got {tuple(image_mask.shape)}"
            )

    def decode_step(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """One token per row over the KV-caches (see ``TransformerDecoder.decode_step``)."""
        return self(tokens, input_pos=input_pos, check_inputs=False)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits_from_hidden(hidden)

    def output_weight(self) -> torch.Tensor:
        return self.decoder.output_weight()

    def plain_output_weight(self) -> torch.Tensor | None:
        return self.decoder.plain_output_weight()

    def setup_caches(
        self, batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None
    ) -> None:
        self.decoder.setup_caches(batch_size, max_seq_len, dtype)

    def reset_caches(self) -> None:
        self.decoder.reset_caches()
        self._decode_mask = None

    def remove_caches(self) -> None:
        self.decoder.remove_caches()
        self._decode_mask = None

    def caches_are_enabled(self) -> bool:
        return self.decoder.caches_are_enabled()
