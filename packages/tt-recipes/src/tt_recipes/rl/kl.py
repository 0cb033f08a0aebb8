"""PPO's KL penalty: a per-token estimate of KL(policy || reference) subtracted from the
reward, with a fixed or adaptive coefficient (Ziegler et al., 2019)."""

from __future__ import annotations

from typing import Any

import torch


def token_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``log pi - log ref`` of each sampled token (the k1 estimator), 0 outside ``mask``."""
    return (logprobs - ref_logprobs) * mask.to(logprobs.dtype)


class KLController:
    """The penalty coefficient. With ``target`` set it adapts after every step towards a mean
    per-sequence KL of ``target``: ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon``
    (``n`` sequences in the step). A stateful part of every checkpoint."""

    def __init__(self, value: float, target: float | None = None, horizon: int = 10_000) -> None:
        if value < 0:
            raise ValueError(f"kl_coef={value} must be >= 0")
        self.value = value
        self.target = target
        self.horizon = horizon

    def update(self, mean_kl: float, n_sequences: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, mean_kl / self.target - 1))
        self.value *= 1 + error * n_sequences / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
