"""Advantages from the rewards of groups of completions (one group per prompt).

``rewards`` is ``[n_prompts * group_size]`` with each prompt's completions next to each other.

- ``group_advantages``: GRPO. ``r - mean(group)``, divided by a standard deviation: the
  group's (``scale="group"``, the GRPO paper), the whole batch's (``"batch"``), or none
  (``"none"``, Dr. GRPO: unscaled, so groups of near-equal rewards are not blown up).
- ``rloo_advantages``: leave-one-out (RLOO): ``r_i - mean(r_j, j != i)`` within the group.

Standard deviations are unbiased (Bessel-corrected) with ``EPS`` added, as in TRL.
"""

from __future__ import annotations

import torch

EPS = 1e-4
SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    batch_std: float | None = None,
) -> torch.Tensor:
    """GRPO advantages ``[n]``. ``batch_std``: the std of the rewards of the whole batch on
    every rank (``scale="batch"``; computed from this batch when None)."""
    groups = _groups(rewards, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (groups.std(dim=1, keepdim=True) + EPS)
    elif scale == "batch":
        std = rewards.std() if batch_std is None else torch.tensor(batch_std)
        advantages = advantages / (std + EPS)
    elif scale != "none":
        raise ValueError(f"scale_rewards={scale!r} is not valid; valid: {SCALES}")
    return advantages.flatten()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantages ``[n]``: each reward minus the mean of the others in its group."""
    groups = _groups(rewards, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).flatten()


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(
            f"num_generations={group_size}: advantages compare completions of the same prompt, "
            "so each group needs at least 2"
        )
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


# ---------------------------------------------------------------------------------------------
# PPO: generalised advantage estimation over response tokens


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) per response token.

    ``rewards``, ``values`` ``[b, t]`` and ``mask`` ``[b, t]`` (True at response tokens, each row's
    contiguous): ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` 0 after a row's last
    token, ``A_t = delta_t + gamma * lam * A_{t+1}``. Returns ``(advantages, returns)``,
    ``returns = advantages + values``; both 0 outside the mask.
    """
    mask_f = mask.to(values.dtype)
    rewards, values = rewards * mask_f, values * mask_f
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask_f[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask_f


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    moments: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries (unbiased std, + 1e-8); ``shift_mean=False``
    keeps the mean (rewards whitening). ``moments``: ``(mean, var)`` over every process's
    batch, for the same whitening whatever the split; this batch's otherwise."""
    mask_f = mask.to(values.dtype)
    if moments is None:
        n = mask_f.sum()
        mean = (values * mask_f).sum() / n
        var = (((values - mean) ** 2) * mask_f).sum() / (n - 1).clamp(min=1)
    else:
        mean, var = (torch.tensor(m, dtype=values.dtype) for m in moments)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask_f
