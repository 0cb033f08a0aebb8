"""Learning-rate schedules (plain ``torch.optim.lr_scheduler.LambdaLR`` objects)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    num_cycles: float = 0.5,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup from 0 to the optimizer's lr, then cosine decay to ``min_lr_ratio * lr``.

    ``optimizer`` and ``num_training_steps`` (optimizer steps of the whole run) are passed by
    the recipe; the config sets the rest.
    """
    if num_warmup_steps < 0:
        raise ValueError(f"lr_scheduler.num_warmup_steps must be >= 0, got {num_warmup_steps}")

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return (step + 1) / (num_warmup_steps + 1)
        decay_steps = max(1, num_training_steps - num_warmup_steps)
        progress = min(1.0, (step - num_warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return LambdaLR(optimizer, factor)


def constant_with_warmup(
    optimizer: torch.optim.Optimizer, num_training_steps: int, num_warmup_steps: int = 0
) -> LambdaLR:
    """Linear warmup, then a constant learning rate."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / (num_warmup_steps + 1))

    return LambdaLR(optimizer, factor)
