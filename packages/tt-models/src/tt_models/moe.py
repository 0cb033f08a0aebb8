"""Mixture-of-experts feed-forward (Qwen3-MoE, Mixtral, Qwen2-MoE): a top-k router over gated
experts, optionally beside a shared expert every token takes.

Each token's router probabilities are a softmax over the experts (in fp32); the token goes to
its ``top_k`` most probable experts, weighted by those probabilities (renormalised to sum to 1
when ``norm_topk_prob``, as Mixtral always does). Experts are ordinary ``FeedForward`` modules
(``experts.{e}.gate_proj`` ...), so adapters, NF4 and FSDP treat them like any linear layer.

Compute is grouped, never a loop over tokens: the (token, expert) pairs are sorted by expert,
and each expert runs once on its contiguous slice ("loop": one matmul per expert) or all at
once on stacked weights with ``torch._grouped_mm`` ("grouped"); both give the same outputs.

After each forward that trains (training mode, gradients on) the block keeps, for a recipe
to add to its objective and log: ``aux_loss``, the load-balancing loss of Switch Transformer
as transformers computes it (``n_experts * sum_e tokens_routed_to_e / tokens *
mean_probability_e``: ``top_k`` when perfectly balanced; transformers' ``load_balancing_loss``
is the mean over layers); ``z_loss``, ST-MoE's router z-loss (``mean_t
logsumexp(router_logits_t) ** 2``, which keeps the router's logits small); and
``expert_load``, the fraction of routed pairs each expert got.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tt_models.feed_forward import GATE_ACTIVATIONS, FeedForward

EXPERT_COMPUTE = ("loop", "grouped")


class MoEFeedForward(nn.Module):
    """``x`` ``[..., dim]`` -> the weighted sum of its ``top_k`` experts' outputs."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        n_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        activation: str = "silu",
        compute: str = "loop",
        shared_hidden_dim: int | None = None,
        shared_gate: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoEFeedForward: top_k={top_k} must be in 1..n_experts={n_experts}")
        if compute not in EXPERT_COMPUTE:
            raise ValueError(f"MoEFeedForward: compute={compute!r}; valid: {list(EXPERT_COMPUTE)}")
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.compute = compute
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(dim, hidden_dim, activation=activation) for _ in range(n_experts)
        )
        # An expert every token takes (Qwen2-MoE), scaled by a sigmoid gate when shared_gate.
        self.shared_expert = (
            None
            if shared_hidden_dim is None
            else FeedForward(dim, shared_hidden_dim, activation=activation)
        )
        self.shared_gate = nn.Linear(dim, 1, bias=False) if shared_gate else None
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.expert_load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.router(tokens)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)  # [t, n_experts]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [t, top_k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        # Only a forward that trains needs them (not evaluation, generation or a reference
        # model's no-grad pass, which would overwrite the policy's).
        if self.training and torch.is_grad_enabled():
            self._record_balance(logits, probs, chosen)
        # Every (token, expert) pair, sorted so that each expert's pairs are contiguous.
        order = chosen.flatten().argsort(stable=True)
        token_of_pair = order // self.top_k
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts))
        routed = tokens[token_of_pair]
        outputs = self._grouped(routed, counts) if self._can_group() else (
            self._loop(routed, counts))  # fmt: skip
        outputs = outputs * weights.flatten()[order, None].to(outputs.dtype)
        combined = torch.zeros_like(tokens).index_add_(0, token_of_pair, outputs)
        if self.shared_expert is not None:
            shared = self.shared_expert(tokens)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(tokens)) * shared
            combined = combined + shared
        return combined.reshape(shape)

    def _can_group(self) -> bool:
        """Grouped compute stacks the experts' plain weights: experts with adapters or NF4
        weights (LoRA, QLoRA) run the loop, which calls each expert module."""
        return self.compute == "grouped" and all(
            type(getattr(expert, name)) is nn.Linear
            for expert in self.experts
            for name in ("gate_proj", "up_proj", "down_proj")
        )

    def _loop(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        slices = routed.split(counts.tolist())
        return torch.cat([expert(part) for expert, part in zip(self.experts, slices)])

    def _grouped(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offsets = counts.cumsum(0).to(torch.int32)

        def stacked(name: str) -> torch.Tensor:  # [n_experts, in, out]
            return torch.stack([getattr(e, name).weight for e in self.experts]).transpose(1, 2)

        activation = GATE_ACTIVATIONS[self.experts[0].activation]
        gate = torch._grouped_mm(routed, stacked("gate_proj"), offs=offsets)
        up = torch._grouped_mm(routed, stacked("up_proj"), offs=offsets)
        return torch._grouped_mm(activation(gate) * up, stacked("down_proj"), offs=offsets)

    def _record_balance(
        self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor
    ) -> None:
        n_experts = probs.shape[-1]
        routed_share = F.one_hot(chosen, n_experts).float().sum(dim=1).mean(dim=0)  # [n_experts]
        self.expert_load = (routed_share / self.top_k).detach()
        self.aux_loss = n_experts * (routed_share * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits.float(), dim=-1).square().mean()


class RouterLosses(NamedTuple):
    """What a model's mixture-of-experts blocks recorded in a forward that trains."""

    aux_loss: torch.Tensor  # load balancing, mean over blocks (with its graph)
    z_loss: torch.Tensor  # router z-loss, mean over blocks (with its graph)
    expert_load: torch.Tensor  # [blocks, n_experts]: each expert's share of routed pairs


def moe_blocks(model: nn.Module) -> list[MoEFeedForward]:
    """``model``'s mixture-of-experts blocks (none for a dense model). Find them once: a
    walk over every module of a large MoE takes tens of milliseconds."""
    return [block for block in model.modules() if isinstance(block, MoEFeedForward)]


def take_balance(blocks: list[MoEFeedForward]) -> RouterLosses | None:
    """The router losses and expert loads ``blocks`` (``moe_blocks(model)``) recorded since
    the last call, which clears them; None when none recorded any (a dense model, or nothing
    trained)."""
    blocks = [block for block in blocks if block.aux_loss is not None]
    if not blocks:
        return None
    losses = RouterLosses(
        aux_loss=torch.stack([block.aux_loss for block in blocks]).mean(),
        z_loss=torch.stack([block.z_loss for block in blocks]).mean(),
        expert_load=torch.stack([block.expert_load for block in blocks]),
    )
    for block in blocks:
        block.aux_loss = block.z_loss = block.expert_load = None
    return losses


def active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: all of ``model``'s but the experts it is not routed to
    (``n_experts - top_k`` per mixture-of-experts block). Equal to the total for dense models."""
    total = sum(p.numel() for p in model.parameters())
    for block in model.modules():
        if isinstance(block, MoEFeedForward):
            per_expert = sum(p.numel() for p in block.experts[0].parameters())
            total -= (len(block.experts) - block.top_k) * per_expert
    return total
