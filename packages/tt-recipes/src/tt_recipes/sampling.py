"""A sampler whose position can be saved and restored, for exact mid-epoch resume.

The order of epoch ``e`` is a permutation drawn from ``seed + e`` (or the identity when not
shuffling), split across data-parallel ranks like ``DistributedSampler``. The state is just
``(epoch, index)``: the recipe saves the number of samples consumed and the resumed run skips
exactly those.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Deterministic per-epoch order with a restorable position.

    Args:
        num_samples: length of the dataset.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        shuffle: draw a permutation per epoch, otherwise the dataset order.
        rank, world_size: this process's share of every epoch (the tail that does not divide
            evenly is dropped so every rank takes the same number of steps).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_samples < world_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than the {world_size} processes"
            )
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_index = 0  # samples of this rank's share already consumed this epoch

    def __len__(self) -> int:
        return self.num_samples // self.world_size - self.start_index

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch to iterate and how many of this rank's samples to skip."""
        self.epoch = epoch
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = self.num_samples // self.world_size
        mine = order[self.rank : per_rank * self.world_size : self.world_size]
        return iter(mine[self.start_index :])
