"""The decoder: token embeddings, a stack of pre-norm blocks, a final norm and the output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tt_models.attention import MultiHeadAttention
from tt_models.config import DecoderConfig
from tt_models.cross_attention import CrossAttention, TransformerCrossAttentionLayer
from tt_models.kv_cache import KVCache
from tt_models.norm import RMSNorm
from tt_models.rope import RotaryEmbedding


class TransformerSelfAttentionLayer(nn.Module):
    """Pre-norm block: ``x + attn(attn_norm(x))`` then ``h + mlp(mlp_norm(h))``.

    With ``attn_post_norm``/``mlp_post_norm`` (Gemma 2) each branch output is normalised again
    before the residual add: ``x + attn_post_norm(attn(attn_norm(x)))``.
    """

    def __init__(
        self,
        attn: MultiHeadAttention,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        attn_post_norm: nn.Module | None = None,
        mlp_post_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.attn_post_norm = attn_post_norm
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.mlp_post_norm = mlp_post_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: ``[b, s, dim]`` -> ``[b, s, dim]``; see ``MultiHeadAttention.forward``."""
        attn_out = self.attn(self.attn_norm(x), rope, mask, input_pos)
        if self.attn_post_norm is not None:
            attn_out = self.attn_post_norm(attn_out)
        h = x + attn_out
        mlp_out = self.mlp(self.mlp_norm(h))
        if self.mlp_post_norm is not None:
            mlp_out = self.mlp_post_norm(mlp_out)
        return h + mlp_out


class TransformerDecoder(nn.Module):
    """Decoder-only transformer assembled from the modules it is given.

    ``output=None`` ties the output projection to ``tok_embeddings.weight`` (no ``output.weight``
    key in the state dict). Logits come back in the model's dtype (fp32 for an fp32 model, bf16
    for a bf16 one); cast them before a loss if you need fp32.

    For a loss that never materialises ``[b, s, vocab]`` logits, call
    ``forward(tokens, return_hidden=True)`` to get the final-norm output ``[b, s, dim]`` and
    turn chunks of it into logits with ``logits_from_hidden(chunk)``: that applies the final
    logit soft-capping of families that have it (``final_softcap``, Gemma 2), which a bare
    ``chunk @ output_weight().T`` would miss.
    """

    def __init__(
        self,
        *,
        tok_embeddings: nn.Embedding,
        layers: list[nn.Module],
        rope: RotaryEmbedding,
        norm: nn.Module,
        output: nn.Linear | None,
        config: DecoderConfig,
        local_rope: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleList(layers)
        self.rope = rope
        # Sliding-window layers' own RoPE (Gemma 3); None: they share ``rope``.
        self.local_rope = local_rope
        self.norm = norm
        self.output = output
        self.final_softcap = config.final_softcap
        # Gemma scales embeddings by sqrt(dim), rounded to the model dtype like transformers.
        self.embed_scale = config.dim**0.5 if config.scale_embeddings else None

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Initialise for training from scratch: N(0, std) for embeddings and projections
        (transformers' ``initializer_range`` convention), zero biases, unit norm weights.

        PyTorch's defaults are wrong for a language model: ``nn.Embedding`` draws N(0, 1), so a
        tied output layer starts with logits of magnitude ~sqrt(dim) and a loss far above
        ln(vocab_size).
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def output_weight(self) -> torch.Tensor:
        """The output projection weight ``[vocab_size, dim]`` (the embedding weight when tied)."""
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def plain_output_weight(self) -> torch.Tensor | None:
        """The weight ``W`` when ``logits_from_hidden(h)`` is exactly ``h @ W.T`` (a plain or
        tied output layer, no soft-capping), else None (an adapter, fake quantization or a
        cap changes the map). A loss that fuses the projection with cross-entropy needs it."""
        if self.final_softcap is not None:
            return None
        if self.output is None:
            return self.tok_embeddings.weight
        if type(self.output) is nn.Linear and self.output.bias is None:
            return self.output.weight
        return None

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project final-norm hidden states ``[..., dim]`` to logits ``[..., vocab_size]``,
        soft-capped when the family caps its logits (Gemma 2).

        Calls the output module when there is one, so adapters wrapping it (LoRA) take effect.
        """
        if self.output is not None:
            logits = self.output(hidden)
        else:
            logits = F.linear(hidden, self.output_weight())
        if self.final_softcap is not None:
            logits = self.final_softcap * torch.tanh(logits / self.final_softcap)
        return logits

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        return_hidden: bool = False,
        check_inputs: bool = True,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder.

        Args:
            tokens: ``[b, s]`` token ids.
            mask: boolean, True where a query may attend to a key: ``[b, s, s]`` (e.g.
                block-causal for packed rows, or causal-and-not-padding) or ``[b, s, cache_len]``
                with KV-caches. Every query row must allow at least one key. None means causal
                (with caches: key slot ``j`` is visible to a query at position ``p`` if ``j <= p``).
            input_pos: ``[b, s]`` integer positions for RoPE (restarting at 0 per packed
                document; counting from the first real token in left-padded rows). With caches
                they are also the cache slots written and are required. None means ``0..s-1``.
            return_hidden: return the final-norm hidden states ``[b, s, dim]`` instead of logits.
            check_inputs: validate shapes and cache slots (which waits on the device); off
                only for a caller that guarantees them (``decode_step``).
            encoder_states: ``[b, n, dim]`` image tokens for the cross-attention layers of a
                vision model (``tt_models.fusion``); None: the ones cached by an earlier call
                with KV-caches, else the cross-attention layers are skipped (text only).
            encoder_mask: bool ``[b, s, n]``, True where a token may attend to an image token;
                needed whenever the cross-attention layers run.

        Returns:
            Logits ``[b, s, vocab_size]`` in the model dtype, or hidden states (see above).
        """
        if check_inputs:
            input_pos = self._check_inputs(tokens, mask, input_pos)
        if mask is None and self.caches_are_enabled():
            slots = torch.arange(self._cache_len(), device=tokens.device)
            mask = slots <= input_pos[..., None]  # [b, s, cache_len]
        masks = self._layer_masks(mask, input_pos)
        rope = self.rope(input_pos)
        local_rope = rope if self.local_rope is None else self.local_rope(input_pos)
        h = self.tok_embeddings(tokens)
        if self.embed_scale is not None:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        for index, layer in enumerate(self.layers):
            if isinstance(layer, TransformerCrossAttentionLayer):
                if encoder_states is not None or layer.cross_attn.has_cached_states():
                    h = layer(h, encoder_states, encoder_mask)
                continue
            window = self.config.layer_window(index)
            h = layer(h, rope if window is None else local_rope, masks[window], input_pos)
        h = self.norm(h)
        return h if return_hidden else self.logits_from_hidden(h)

    def decode_step(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, 1, vocab]`` of one new token per row ``tokens`` ``[b, 1]`` at cache
        slots ``input_pos`` ``[b, 1]``, attending to every earlier slot of its row.

        ``forward`` without its input checks (which wait on the device): for a generation loop
        that sized the KV-caches itself, and a static graph ``torch.compile`` can capture. It
        goes through ``__call__``, so module hooks (FSDP's) run as for ``forward``.
        """
        return self(tokens, input_pos=input_pos, check_inputs=False)

    def _layer_masks(
        self, mask: torch.Tensor | None, input_pos: torch.Tensor
    ) -> dict[int | None, torch.Tensor | None]:
        """The mask of each distinct sliding window (None: full attention) among the layers.

        A sliding-window query at position ``p`` also drops keys at positions ``<= p - window``.
        Key positions are the cache slots with a KV-cache and ``input_pos`` without one, so
        packed documents and left-padded rows slide by their own positions.
        """
        windows = {self.config.layer_window(i) for i in range(len(self.layers))}
        masks: dict[int | None, torch.Tensor | None] = {None: mask}
        if windows == {None}:
            return masks
        if self.caches_are_enabled():
            key_pos = torch.arange(self._cache_len(), device=input_pos.device).expand(
                input_pos.shape[0], -1
            )
        else:
            key_pos = input_pos
        if mask is None:  # causal over the sequence order, as SDPA's is_causal
            s = input_pos.shape[1]
            mask = torch.ones(s, s, dtype=torch.bool, device=input_pos.device).tril()
        for window in windows - {None}:
            recent = key_pos[:, None, :] > input_pos[:, :, None] - window  # [b, s, kv_len]
            masks[window] = mask & recent
        return masks

    def _check_inputs(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, input_pos: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate shapes and return ``input_pos`` (defaulting to ``0..s-1``)."""
        if tokens.dim() != 2:
            raise ValueError(
                f"TransformerDecoder: tokens must be [batch, seq_len], got shape {tuple(tokens.shape)}"
            )
        b, s = tokens.shape
        if input_pos is None:
            if self.caches_are_enabled():
                raise ValueError(
                    "TransformerDecoder: input_pos [batch, seq_len] is required when KV-caches "
                    "are enabled (it names the cache slots to write)"
                )
            input_pos = torch.arange(s, device=tokens.device).expand(b, s)
        elif tuple(input_pos.shape) != (b, s) or input_pos.is_floating_point():
            raise ValueError(
                f"TransformerDecoder: input_pos must be an integer tensor of shape {(b, s)} "
                f"like tokens, got {input_pos.dtype} {tuple(input_pos.shape)}"
            )
        if self.caches_are_enabled():
            self._check_cache_fits(b, input_pos)
        if mask is not None:
            kv_len = self._cache_len() if self.caches_are_enabled() else s
            if mask.dtype != torch.bool or tuple(mask.shape) != (b, s, kv_len):
                raise ValueError(
                    f"TransformerDecoder: mask must be a bool tensor of shape {(b, s, kv_len)} "
                    f"([batch, seq_len, {'cache_len' if self.caches_are_enabled() else 'seq_len'}])"
                    f", got {mask.dtype} {tuple(mask.shape)}"
                )
        return input_pos

    def _check_cache_fits(self, batch_size: int, input_pos: torch.Tensor) -> None:
        cache = self._first_cache()
        if batch_size != cache.batch_size:
            raise ValueError(
                f"TransformerDecoder: batch size {batch_size} does not match the KV-cache batch "
                f"size {cache.batch_size} given to setup_caches"
            )
        low, high = int(input_pos.min()), int(input_pos.max())
        if low < 0 or high >= cache.max_seq_len:
            raise ValueError(
                f"TransformerDecoder: input_pos spans [{low}, {high}] but the KV-cache holds "
                f"positions 0..{cache.max_seq_len - 1}; call setup_caches with a larger max_seq_len"
            )

    def setup_caches(
        self, batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None
    ) -> None:
        """Give every attention layer a fresh KV-cache (``dtype`` defaults to the model's)."""
        if batch_size <= 0 or max_seq_len <= 0:
            raise ValueError(
                f"setup_caches: batch_size={batch_size} and max_seq_len={max_seq_len} must be > 0"
            )
        dtype = dtype or self.tok_embeddings.weight.dtype
        for attn in self._attentions():
            attn.setup_cache(batch_size, max_seq_len, dtype)
        for attn in self._cross_attentions():
            attn.caching, attn.cached_kv = True, None

    def reset_caches(self) -> None:
        """Zero every KV-cache to start new sequences with the same cache sizes."""
        if not self.caches_are_enabled():
            raise RuntimeError("reset_caches: no KV-caches are set up; call setup_caches first")
        for attn in self._attentions():
            attn.kv_cache.reset()
        for attn in self._cross_attentions():
            attn.cached_kv = None

    def remove_caches(self) -> None:
        """Drop the KV-caches (back to training-style forward)."""
        for attn in self._attentions():
            attn.kv_cache = None
        for attn in self._cross_attentions():
            attn.caching, attn.cached_kv = False, None

    def caches_are_enabled(self) -> bool:
        """Whether ``setup_caches`` has been called (and not undone by ``remove_caches``)."""
        return any(attn.kv_cache is not None for attn in self._attentions())

    def _attentions(self) -> list[MultiHeadAttention]:
        return [m for m in self.modules() if isinstance(m, MultiHeadAttention)]

    def _cross_attentions(self) -> list[CrossAttention]:
        return [m for m in self.modules() if isinstance(m, CrossAttention)]

    def _first_cache(self) -> KVCache:
        return self._attentions()[0].kv_cache

    def _cache_len(self) -> int:
        return self._first_cache().max_seq_len
