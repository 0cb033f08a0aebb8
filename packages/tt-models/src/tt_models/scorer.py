"""A decoder that scores instead of predicting tokens: reward and value models.

``TransformerScorer`` is the decoder's final hidden states through a ``score`` projection
``[dim -> num_labels]`` (no bias), like transformers' ``*ForSequenceClassification``: a value
per token (PPO's value model) or, taken at the last token that is not padding, one score per
sequence (a reward model; transformers' rule, so the scores equal its model's).
"""

from __future__ import annotations

import torch
from torch import nn

from tt_models.decoder import TransformerDecoder


class TransformerScorer(nn.Module):
    """``decoder`` (its output projection unused) and a ``score`` head.

    State-dict keys: the decoder's own under ``decoder.`` and ``score.weight``
    ``[num_labels, dim]``.
    """

    def __init__(self, decoder: TransformerDecoder, num_labels: int = 1) -> None:
        super().__init__()
        decoder.output = None  # the LM head is never used: do not keep (or shard) it
        self.decoder = decoder
        self.config = decoder.config
        dtype = decoder.tok_embeddings.weight.dtype
        device = decoder.tok_embeddings.weight.device
        self.score = nn.Linear(
            decoder.config.dim, num_labels, bias=False, dtype=dtype, device=device
        )
        if not self.score.weight.is_meta:
            nn.init.normal_(self.score.weight, std=0.02)

    @property
    def num_labels(self) -> int:
        return self.score.out_features

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``[b, s, num_labels]`` of every position of ``tokens`` ``[b, s]``."""
        hidden = self.decoder(tokens, mask=mask, input_pos=input_pos, return_hidden=True)
        return self.score(hidden)

    def sequence_scores(self, tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
        """One score per sequence ``[b, num_labels]``, at its rightmost token that is not
        ``pad_id`` (transformers' rule; the last position when ``pad_id`` is None)."""
        return at_last_token(self(tokens), tokens, pad_id)


def last_token_index(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """``[b]``: the index of each row's rightmost token that is not ``pad_id``."""
    if pad_id is None:
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return (positions * (tokens != pad_id)).argmax(-1)


def at_last_token(values: torch.Tensor, tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """``values`` ``[b, s, ...]`` at each row's last non-padding token: ``[b, ...]``."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return values[rows, last_token_index(tokens, pad_id)]
