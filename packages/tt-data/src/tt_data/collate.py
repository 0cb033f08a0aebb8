"""Collators: lists of dataset items -> batched tensors.

- ``padded_collate_sft``: ``{"tokens" [b, s], "labels" [b, s]}`` right-padded with pad_id/-100.
- ``padded_collate_preference``: the same keys with ``2b`` rows, chosen rows then rejected.
- ``padded_collate_packed``: packed rows -> ``tokens``, ``labels``, ``input_pos`` and
  ``document_ids`` [b, s] (-1 on padding); ``tt_models.block_causal_mask(document_ids)`` is the
  mask ``TransformerDecoder.forward(tokens, mask=..., input_pos=...)`` takes.
"""

from __future__ import annotations

import torch

from tt_data.labels import IGNORE_INDEX


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad int lists into a ``[len(rows), longest]`` long tensor."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def padded_collate_sft(
    batch: list[dict[str, list[int]]],
    pad_id: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Pad ``tokens`` with ``pad_id`` and ``labels`` with ``ignore_index``: ``[b, s]`` each."""
    return {
        "tokens": _pad([item["tokens"] for item in batch], pad_id),
        "labels": _pad([item["labels"] for item in batch], ignore_index),
    }


def padded_collate_preference(
    batch: list[dict[str, list[int]]],
    pad_id: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """One ``[2b, s]`` batch: rows ``0..b-1`` chosen, rows ``b..2b-1`` the matching rejected."""
    order = [("chosen_tokens", "chosen_labels"), ("rejected_tokens", "rejected_labels")]
    tokens = [item[t] for t, _ in order for item in batch]
    labels = [item[lab] for _, lab in order for item in batch]
    return {"tokens": _pad(tokens, pad_id), "labels": _pad(labels, ignore_index)}


def padded_collate_packed(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Stack packed rows (all ``max_seq_len`` long). The attention mask is the model's to
    build from ``document_ids`` (``tt_models.block_causal_mask``): a ``[b, s, s]`` mask made
    here would cost ``s`` times the batch's memory to move to the device."""
    keys = ("tokens", "labels", "input_pos", "document_ids")
    lengths = {len(item["tokens"]) for item in batch}
    if len(lengths) > 1:
        raise ValueError(f"packed rows must share one length, got lengths {sorted(lengths)}")
    return {k: torch.tensor([item[k] for item in batch], dtype=torch.long) for k in keys}
