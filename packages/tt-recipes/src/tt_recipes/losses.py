"""Loss functions shared by the recipes.

Cross-entropy here is a *sum* over trained tokens; the recipe divides by the number of trained
tokens in the whole optimizer step (all gradient-accumulation micro-batches), so that
``batch_size=4, gradient_accumulation_steps=1`` and ``batch_size=1, gradient_accumulation_steps=4``
produce the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels for next-token prediction: position t is scored on token t+1.

    labels: [b, s] -> [b, s] where the last position is ``ignore_index``.
    """
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


Projection = Callable[[torch.Tensor], torch.Tensor]


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    project: Projection,
    targets: torch.Tensor,
    *,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Summed cross-entropy of ``project(hidden)`` against ``targets``.

    ``project`` maps hidden states to logits (``model.logits_from_hidden``: the output layer,
    its adapters and any logit soft-capping). It runs, with the fp32 upcast, one sequence chunk
    at a time, so the fp32 logits of the whole batch ([b, s, vocab], often the largest tensor
    of a step) never exist at once. Each chunk is checkpointed: its logits are recomputed in
    backward instead of being kept alive.

    hidden: [b, s, dim]; targets: [b, s] already shifted.
    Returns a 0-dim fp32 tensor (sum over non-ignored positions).
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.chunk(num_chunks, dim=1), targets.chunk(num_chunks, dim=1)):
        total = total + torch.utils.checkpoint.checkpoint(
            _chunk_loss, h, project, t, ignore_index, use_reentrant=False
        )
    return total


def _chunk_loss(
    hidden: torch.Tensor, project: Projection, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    logits = project(hidden).float()  # [b, chunk, vocab]
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
    )


def cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Summed cross-entropy over full logits [b, s, vocab] (reference for the chunked version)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
    )


class ChunkedCrossEntropy:
    """The default SFT loss: summed cross-entropy computed in ``num_chunks`` sequence chunks.

    Called by the recipe as ``loss(hidden [b, s, dim], model.logits_from_hidden, targets)``.
    """

    def __init__(self, num_chunks: int = 8, ignore_index: int = IGNORE_INDEX):
        if num_chunks < 1:
            raise ValueError(f"loss.num_chunks must be >= 1, got {num_chunks}")
        self.num_chunks = num_chunks
        self.ignore_index = ignore_index

    def __call__(
        self, hidden: torch.Tensor, project: Projection, targets: torch.Tensor
    ) -> torch.Tensor:
        return chunked_cross_entropy_sum(
            hidden,
            project,
            targets,
            num_chunks=self.num_chunks,
            ignore_index=self.ignore_index,
        )
