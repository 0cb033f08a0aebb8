"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Fixed-size per-layer cache of keys and values, ``[b, n_kv_heads, max_seq_len, head_dim]``.

    Each row writes at its own positions, so rows of a batch may be at different lengths
    (left-padded prompts). The buffers are not persistent: they never enter a state dict.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), False)

    @property
    def batch_size(self) -> int:
        return self.k_cache.shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.k_cache.shape[2]

    def reset(self) -> None:
        """Zero the cache so that a new sequence can start."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[b, n_kv_heads, s, head_dim]`` at ``input_pos`` ``[b, s]``.

        Returns the whole caches, ``[b, n_kv_heads, max_seq_len, head_dim]`` each.
        """
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        # Advanced indices on dims 0 and 2 put the indexed dims first: [b, s, n_kv_heads, hd].
        self.k_cache[rows, :, input_pos] = k.transpose(1, 2).to(self.k_cache.dtype)
        self.v_cache[rows, :, input_pos] = v.transpose(1, 2).to(self.v_cache.dtype)
        return self.k_cache, self.v_cache
