"""Direct Preference Optimization: the ``full_finetune`` loop with a preference objective.

Each sample is a (chosen, rejected) pair of responses to one prompt. The policy learns to
raise the log-likelihood of the chosen response relative to a frozen reference model (the
starting model) more than that of the rejected one (``tt_recipes.losses.DPOLoss``).

With a ``peft`` section the policy is the starting model plus LoRA/DoRA/QLoRA adapters and the
reference is the same model with its adapters switched off, so no second copy exists. Without
one (``peft: null``) every parameter trains and the reference is a second, frozen copy of the
starting model, sharded like the policy under torchrun.

    tt run dpo --config tiny/dpo
    tt run --nproc_per_node 2 dpo --config tiny/dpo batch_size=8
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig
from tt_data import padded_collate_preference
from tt_peft import disable_adapters

from tt_recipes import training
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.losses import sequence_logprobs, shift_labels
from tt_recipes.recipes import full_finetune, lora_finetune
from tt_recipes.recipes.full_finetune import Run, StepResult, forward_hidden, hidden_states

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="dpo",
    description="Direct Preference Optimization, LoRA/QLoRA (peft) or full, on 1..N processes.",
    keys={
        **full_finetune.SFT_KEYS,
        "peft": lora_finetune.OPTIONAL_PEFT,
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.losses.DPOLoss (beta, label_smoothing)",
        ),
    },
)

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy")


def recipe_main(cfg: DictConfig) -> None:
    try:
        if not cfg.checkpointer.get("checkpoint_dir"):
            raise ValueError(
                "dpo starts from a trained model, which is also its reference: set "
                "checkpointer.checkpoint_dir (a HF model directory, or the output_dir of an "
                "earlier run such as tiny/full)"
            )
        lora = cfg.peft is not None
        run = full_finetune.setup(
            cfg, **lora_finetune.optional_adapters(cfg), collate=collate_pairs
        )
        reference = None if lora else training.frozen_model(cfg, run.dist)
        log.info(
            "Reference model: the policy with its adapters switched off"
            if lora
            else "Reference model: a frozen copy of the starting model"
        )
        run.forward_backward = partial(dpo_forward_backward, reference=reference)
        run.evaluate = partial(dpo_validate, reference=reference)
        full_finetune.train(run)
    finally:
        tt_dist.destroy_distributed()


def collate_pairs(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """``[2b, s]``: the b chosen responses, then their b rejected ones."""
    if "chosen_tokens" not in batch[0]:
        raise ValueError(
            f"dpo needs preference pairs, but the dataset's samples hold {sorted(batch[0])}; "
            "use a preference dataset (tt_data.preference_dataset, hh_rlhf_helpful, "
            "stack_exchange_paired, synthetic_arithmetic_preference), not packed"
        )
    return padded_collate_preference(batch, pad_id=pad_id)


@torch.no_grad()
def reference_logprobs(
    run: Run, reference: torch.nn.Module | None, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sequence log-probabilities under the reference: a frozen copy, or (None) the policy
    itself with adapters off."""
    targets = shift_labels(batch["labels"])
    if reference is not None:
        hidden = hidden_states(reference, batch)
        return sequence_logprobs(hidden, reference.logits_from_hidden, targets)
    with disable_adapters(run.model):
        hidden = hidden_states(run.model, batch)
        return sequence_logprobs(hidden, run.model.logits_from_hidden, targets)


def pair_losses(
    run: Run, reference: torch.nn.Module | None, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair losses [b] (with graph) and this batch's summed metrics."""
    ref = reference_logprobs(run, reference, batch)  # first: its activations are freed at once
    hidden = forward_hidden(run, batch)
    policy = sequence_logprobs(hidden, run.model.logits_from_hidden, shift_labels(batch["labels"]))
    losses, chosen, rejected = run.loss_fn(*policy.chunk(2), *ref.chunk(2))
    sums = {
        "loss": losses.sum().item(),
        "rewards/chosen": chosen.sum().item(),
        "rewards/rejected": rejected.sum().item(),
        "rewards/accuracy": (chosen > rejected).sum().item(),
    }
    return losses, sums


def mean_metrics(sums: dict[str, float], pairs: float) -> dict[str, float]:
    means = {name: value / pairs for name, value in sums.items()}
    means["rewards/margin"] = means["rewards/chosen"] - means["rewards/rejected"]
    return means


def dpo_forward_backward(
    run: Run, micro_batches: list[dict[str, torch.Tensor]], reference: torch.nn.Module | None
) -> StepResult:
    """The DPO loss averaged over every pair of the step on every rank, whatever the split
    into micro-batches and processes (FSDP averages gradients over ranks, hence the
    ``world_size`` factor)."""
    world = run.dist.world_size
    pairs = training.sum_over_ranks(sum(b["tokens"].shape[0] // 2 for b in micro_batches))
    sums = dict.fromkeys(METRICS, 0.0)
    for batch in micro_batches:
        batch = {k: v.to(run.dist.device) for k, v in batch.items()}
        losses, batch_sums = pair_losses(run, reference, batch)
        (losses.sum() * (world / pairs)).backward()
        sums = {name: sums[name] + batch_sums[name] for name in METRICS}
    totals = {name: training.sum_over_ranks(value) for name, value in sums.items()}
    metrics = mean_metrics(totals, pairs)
    return StepResult(
        loss=metrics.pop("loss"), tokens=full_finetune.step_tokens(micro_batches), metrics=metrics
    )


@torch.no_grad()
def dpo_validate(run: Run, reference: torch.nn.Module | None) -> dict[str, float]:
    """Mean DPO loss and rewards over the whole validation set, as ``val_*``."""
    run.model.eval()
    sums, pairs = dict.fromkeys(METRICS, 0.0), 0
    for batch in run.val_loader:
        batch = {k: v.to(run.dist.device) for k, v in batch.items()}
        _, batch_sums = pair_losses(run, reference, batch)
        sums = {name: sums[name] + batch_sums[name] for name in METRICS}
        pairs += batch["tokens"].shape[0] // 2
    run.model.train()
    totals = {name: training.sum_over_ranks(value) for name, value in sums.items()}
    means = mean_metrics(totals, max(training.sum_over_ranks(pairs), 1))
    return {f"val_{name}": value for name, value in means.items()}
