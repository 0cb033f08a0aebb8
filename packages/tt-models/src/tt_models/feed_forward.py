"""Gated feed-forward block (SwiGLU or GeGLU)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# Gate activations by DecoderConfig.activation name.
GATE_ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
}


class FeedForward(nn.Module):
    """Gated MLP: ``down_proj(act(gate_proj(x)) * up_proj(x))``, act = SiLU (SwiGLU) or
    tanh-approximated GELU (GeGLU, Gemma)."""

    def __init__(
        self, dim: int, hidden_dim: int, bias: bool = False, activation: str = "silu"
    ) -> None:
        super().__init__()
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(
                f"FeedForward: activation={activation!r} is not supported; "
                f"valid: {sorted(GATE_ACTIVATIONS)}"
            )
        self.activation = activation
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., dim]`` -> ``[..., dim]``."""
        gate = GATE_ACTIVATIONS[self.activation](self.gate_proj(x))
        return self.down_proj(gate * self.up_proj(x))
