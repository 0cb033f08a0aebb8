"""The GRPO family of policy losses, named as TRL names them so configs move across.

Per completion token ``t`` of completion ``i`` with advantage ``A_i``:

    ratio_it = exp(logp_it - old_it)                  (importance_sampling_level="token")
    ratio_i  = exp(mean_t (logp_it - old_it))         ("sequence", GSPO), for every token of i
    L_it = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i)
           + beta * (exp(ref_it - logp_it) - (ref_it - logp_it) - 1)      (k3 KL, beta > 0)

``old`` are the log-probabilities the completion was sampled with (the rollout), so several
optimizer steps on one rollout batch (``num_iterations``) stay clipped to it. How the L_it are
averaged is ``loss_type``:

- ``grpo``: each completion's mean over its tokens, then the mean over completions;
- ``dr_grpo``: the sum over tokens / (completions x ``max_completion_length``) (Dr. GRPO:
  no length normalisation);
- ``dapo``: the sum over tokens / the completion tokens of the whole step, on every process
  and micro-batch (token-level, DAPO);
- ``bnpo``: each micro-batch's mean over its tokens, averaged over micro-batches (weighted
  by their completions).

Every variant but ``bnpo`` gives the same gradient however a step is split into micro-batches
and processes. The trainer divides each micro-batch's summed loss by the step's total
``units`` (completions, or tokens for ``dapo``), which is how these means are formed.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
LEVELS = ("token", "sequence")


class GRPOLoss:
    """The policy loss of GRPO and its variants (see the module docstring).

    Args:
        loss_type: "grpo" | "dr_grpo" | "dapo" | "bnpo".
        epsilon: lower clip range (ratio >= 1 - epsilon).
        epsilon_high: upper clip range (ratio <= 1 + epsilon_high); None means ``epsilon``
            (clip-higher, DAPO: a larger one).
        beta: weight of the k3 KL to the reference model; 0 builds no reference at all.
        importance_sampling_level: "token" or "sequence" (GSPO).
        max_completion_length: the normaliser of dr_grpo (the recipe passes max_new_tokens).
    """

    def __init__(
        self,
        loss_type: str = "grpo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        importance_sampling_level: str = "token",
        max_completion_length: int | None = None,
    ) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss.loss_type={loss_type!r} is not valid; valid: {LOSS_TYPES}")
        if importance_sampling_level not in LEVELS:
            raise ValueError(
                f"loss.importance_sampling_level={importance_sampling_level!r} is not valid; "
                f"valid: {LEVELS}"
            )
        if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0) or beta < 0:
            raise ValueError("loss.epsilon, loss.epsilon_high and loss.beta must be >= 0")
        if loss_type == "dr_grpo" and not max_completion_length:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (max_new_tokens)")
        self.loss_type = loss_type
        self.epsilon_low = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.beta = beta
        self.level = importance_sampling_level
        self.max_completion_length = max_completion_length

    def units(self, mask: torch.Tensor) -> int:
        """What a batch's loss is summed over: completion tokens for dapo, else completions."""
        return int(mask.sum()) if self.loss_type == "dapo" else int(mask.any(dim=1).sum())

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
        """The loss summed over this batch's units, and token-averaged metrics.

        Args:
            logprobs: ``[b, t]`` the policy's log-probabilities of the completion tokens (with
                graph); old_logprobs / ref_logprobs likewise from the rollout / the reference.
            advantages: ``[b]``; mask: ``[b, t]`` bool, True at completion tokens.

        Returns:
            ``(loss, metrics)``: ``metrics`` maps a name to (sum, count) over tokens:
            ``clip_ratio`` (tokens whose ratio the clip stopped), ``kl`` (beta > 0),
            ``ratio``.
        """
        mask_f = mask.to(logprobs.dtype)
        log_ratio = (logprobs - old_logprobs) * mask_f
        if self.level == "sequence":
            lengths = mask_f.sum(dim=1, keepdim=True).clamp(min=1.0)
            log_ratio = (log_ratio.sum(dim=1, keepdim=True) / lengths).expand_as(logprobs)
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        adv = advantages[:, None].to(logprobs.dtype)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        metrics: dict[str, tuple[float, float]] = {}
        tokens = float(mask_f.sum())
        if self.beta != 0:
            if ref_logprobs is None:
                raise ValueError("GRPOLoss with beta > 0 needs ref_logprobs")
            delta = ref_logprobs - logprobs
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + self.beta * kl
            metrics["kl"] = (float((kl.detach() * mask_f).sum()), tokens)
        with torch.no_grad():
            was_clipped = ((ratio < 1 - self.epsilon_low) & (adv < 0)) | (
                (ratio > 1 + self.epsilon_high) & (adv > 0)
            )
            metrics["clip_ratio"] = (float((was_clipped * mask_f).sum()), tokens)
            metrics["ratio"] = (float((ratio * mask_f).sum()), tokens)
        return self._reduce(per_token * mask_f, mask_f), metrics

    def _reduce(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1)
        if self.loss_type == "grpo":
            return (per_token.sum(dim=1) / lengths.clamp(min=1.0)).sum()
        if self.loss_type == "dr_grpo":
            return per_token.sum() / self.max_completion_length
        if self.loss_type == "dapo":
            return per_token.sum()
        # bnpo: this micro-batch's token mean, weighted by its completions
        return per_token.sum() / mask.sum().clamp(min=1.0) * (lengths > 0).sum()


class PPOLoss:
    """PPO's clipped policy loss and clipped value loss (the "37 implementation details"
    forms), summed over response tokens; the trainer divides by the step's tokens.

    Per token with ``ratio = exp(logp - old)``:

        policy = max(-A * ratio, -A * clip(ratio, 1 - epsilon, 1 + epsilon))
        value  = 0.5 * max((V - R)^2, (clip(V, V_old - value_clip_range, V_old + value_clip_range) - R)^2)
        loss   = policy + value_coeff * value

    Args:
        epsilon: the policy's clip range.
        value_clip_range: how far a value may move from its rollout value before its loss
            stops pulling it further.
        value_coeff: the weight of the value loss in the joint loss.
    """

    def __init__(
        self, epsilon: float = 0.2, value_clip_range: float = 0.2, value_coeff: float = 0.1
    ):
        if epsilon < 0 or value_clip_range < 0 or value_coeff < 0:
            raise ValueError(
                "loss.epsilon, loss.value_clip_range and loss.value_coeff must be >= 0"
            )
        self.epsilon = epsilon
        self.value_clip_range = value_clip_range
        self.value_coeff = value_coeff

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        values: torch.Tensor,
        old_values: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
        """``(loss, metrics)``: the joint loss summed over the masked tokens (all ``[b, t]``),
        and (sum, count) metrics: ``policy_loss``, ``value_loss``, ``clip_ratio``,
        ``value_clip_ratio``, ``approx_kl``."""
        mask_f = mask.to(logprobs.dtype)
        ratio = torch.exp((logprobs - old_logprobs) * mask_f)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon)
        policy = torch.maximum(unclipped, clipped)
        values_clipped = old_values + torch.clamp(
            values - old_values, -self.value_clip_range, self.value_clip_range
        )
        value_unclipped = (values - returns) ** 2
        value_clipped = (values_clipped - returns) ** 2
        value = 0.5 * torch.maximum(value_unclipped, value_clipped)
        loss = ((policy + self.value_coeff * value) * mask_f).sum()
        tokens = float(mask_f.sum())
        with torch.no_grad():
            metrics = {
                "policy_loss": (float((policy * mask_f).sum()), tokens),
                "value_loss": (float((value * mask_f).sum()), tokens),
                "clip_ratio": (float(((clipped > unclipped) * mask_f).sum()), tokens),
                "value_clip_ratio": (
                    float(((value_clipped > value_unclipped) * mask_f).sum()),
                    tokens,
                ),
                "approx_kl": (float((0.5 * (logprobs - old_logprobs) ** 2 * mask_f).sum()), tokens),
            }
        return loss, metrics

    @staticmethod
    def units(mask: torch.Tensor) -> int:
        return int(mask.sum())
