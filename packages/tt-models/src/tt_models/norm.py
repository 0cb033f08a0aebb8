"""Root-mean-square layer norm."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm: ``x / rms(x) * (offset + weight)``, normalised in fp32, cast to the input dtype.

    Normalising in fp32 keeps bf16 activations from losing the small-variance directions.
    ``offset=1.0`` is Gemma's convention (the checkpoint stores ``scale - 1``); Gemma also
    multiplies by the weight before casting back, whereas Llama casts first, and each is kept so
    that bf16 results match the reference implementation of its family.
    """

    def __init__(self, dim: int, eps: float = 1e-5, offset: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def reset_parameters(self) -> None:
        """Set the weight to the identity scale (ones, or zeros with an offset of 1)."""
        with torch.no_grad():
            self.weight.fill_(1.0 - self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x`` (any leading shape)."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)
