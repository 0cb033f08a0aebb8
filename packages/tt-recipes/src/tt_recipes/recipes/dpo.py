"""Direct Preference Optimization: preference pairs instead of labels.

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

import torch
from omegaconf import DictConfig
from tt_peft import disable_adapters

from tt_recipes import adapters, trainer, training
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.losses import sequence_logprobs, shift_labels
from tt_recipes.pairs import collate_pairs, pairs
from tt_recipes.trainer import Batch, BatchLoss, Run

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="dpo",
    description="Direct Preference Optimization, LoRA/QLoRA (peft) or full, on 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "peft": adapters.OPTIONAL_PEFT,
        "save_adapter_weights_only": adapters.SAVE_ADAPTER_ONLY,
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.losses.DPOLoss (beta, label_smoothing)",
        ),
    },
    checks=(adapters.check_save_adapter_only,),
)


def recipe_main(cfg: DictConfig) -> None:
    if not cfg.checkpointer.get("checkpoint_dir"):
        raise ValueError(
            "dpo starts from a trained model, which is also its reference: set "
            "checkpointer.checkpoint_dir (a HF model directory, or the output_dir of an "
            "earlier run such as tiny/full)"
        )
    with trainer.distributed(cfg) as dist:
        lora = cfg.peft is not None
        reference = None if lora else training.frozen_model(cfg, dist)
        log.info(
            "Reference model: the policy with its adapters switched off"
            if lora
            else "Reference model: a frozen copy of the starting model"
        )
        objective = trainer.Objective(
            batch_loss=partial(dpo_loss, reference=reference),
            units=pairs,
            collate=collate_pairs,
        )
        run = trainer.setup(cfg, dist, objective=objective, plan=adapters.model_plan(cfg))
        trainer.train(run)


@torch.no_grad()
def reference_logprobs(run: Run, reference: torch.nn.Module | None, batch: Batch) -> torch.Tensor:
    """Sequence log-probabilities under the reference: a frozen copy, or (None) the policy
    itself with adapters off."""
    targets = shift_labels(batch["labels"])
    if reference is not None:
        hidden = trainer.hidden_states(reference, batch)
        return sequence_logprobs(hidden, reference.logits_from_hidden, targets)
    with disable_adapters(run.model):
        hidden = trainer.hidden_states(run.model, batch)
        return sequence_logprobs(hidden, run.model.logits_from_hidden, targets)


def dpo_loss(run: Run, batch: Batch, reference: torch.nn.Module | None) -> BatchLoss:
    """DPO losses summed over the batch's pairs, with the implicit rewards and accuracy."""
    ref = reference_logprobs(run, reference, batch)  # first: its activations are freed at once
    hidden = trainer.forward_hidden(run, batch)
    policy = sequence_logprobs(hidden, run.model.logits_from_hidden, shift_labels(batch["labels"]))
    losses, chosen, rejected = run.loss_fn(*policy.chunk(2), *ref.chunk(2))
    metrics = {
        "rewards/chosen": chosen.sum().item(),
        "rewards/rejected": rejected.sum().item(),
        "rewards/accuracy": (chosen > rejected).sum().item(),
        "rewards/margin": (chosen - rejected).sum().item(),
    }
    return BatchLoss(losses.sum(), metrics)
