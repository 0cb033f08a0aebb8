"""Preference pairs as batches, for the recipes that train on them (dpo, reward_model)."""

from __future__ import annotations

from typing import Any

import torch
from tt_data import padded_collate_preference

Batch = dict[str, torch.Tensor]


def collate_pairs(batch: list[dict[str, Any]], pad_id: int) -> Batch:
    """``[2b, s]``: the b chosen responses, then their b rejected ones."""
    if "chosen_tokens" not in batch[0]:
        raise ValueError(
            f"this recipe needs preference pairs, but the dataset's samples hold "
            f"{sorted(batch[0])}; use a preference dataset (tt_data.preference_dataset, "
            "hh_rlhf_helpful, stack_exchange_paired, synthetic_arithmetic_preference), not packed"
        )
    return padded_collate_preference(batch, pad_id=pad_id)


def pairs(batch: Batch) -> int:
    """How many pairs a batch of ``collate_pairs`` holds."""
    return batch["tokens"].shape[0] // 2
