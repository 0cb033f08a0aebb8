"""Rotary position embeddings in the Hugging Face rotate-half layout, with Llama 3.1 or linear
scaling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def rope_inv_freq(
    head_dim: int,
    base: float,
    scaling: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` in fp32, scaled as ``scaling`` says."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (base**exponents)
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    return _llama3_scale(inv_freq, scaling)


def _llama3_scale(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 long-context scaling.

    Short wavelengths (high frequencies) are kept, long ones are divided by ``factor``, and the
    band in between interpolates smoothly between the two.
    """
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_len / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > original_len / low, inv_freq / factor, interpolated)
    return torch.where(wavelen < original_len / high, inv_freq, scaled)


class RotaryEmbedding(nn.Module):
    """Produces the RoPE ``cos``/``sin`` tables for given positions.

    The tables are computed in fp32 from the positions on every forward, once per model call and
    shared by all layers. Holding no buffer means a model built on the meta device needs no
    re-initialisation after ``to_empty``, and any position (packed rows restarting at 0,
    left-padded rows, long contexts) is valid without a precomputed length.
    """

    def __init__(self, head_dim: int, base: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling

    def forward(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map positions ``[b, s]`` to ``(cos, sin)``, each ``[b, s, head_dim]`` in fp32."""
        inv_freq = rope_inv_freq(self.head_dim, self.base, self.scaling, device=input_pos.device)
        angles = input_pos.float()[..., None] * inv_freq  # [b, s, head_dim // 2]
        # Rotate-half layout: the first and second halves of a head share a frequency.
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[b, n_heads, s, head_dim]`` by ``cos``/``sin`` ``[b, s, head_dim]``.

    The rotation runs in fp32 and the result is cast back to ``x.dtype``.
    """
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated_half = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    out = x32 * cos[:, None] + rotated_half * sin[:, None]
    return out.to(x.dtype)
