"""Reward model: a decoder with a scalar ``score`` head trained on preference pairs, for PPO.

Each pair's chosen and rejected responses are scored at their end of turn (their last stop
token: where a PPO response ends, whatever the chat template writes after it) and the head and
decoder learn ``-log sigmoid(r_chosen - r_rejected - margin)``
(``tt_recipes.losses.BradleyTerryLoss``). The start is a causal LM checkpoint whose
decoder gets a new head, or an earlier reward model. Full or LoRA (the head trains too), on
1..N processes; the same preference datasets DPO reads.

Each checkpoint is a transformers ``*ForSequenceClassification`` (``num_labels=1``; LoRA runs:
adapters merged): ``AutoModelForSequenceClassification.from_pretrained`` gives the same scores.

    tt run reward_model --config tiny/reward_model
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from tt_recipes import adapters, scoring, trainer
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.pairs import collate_pairs, pairs
from tt_recipes.trainer import Batch, BatchLoss, Run

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="reward_model",
    description="Train a scalar reward model on preference pairs (full or LoRA), 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "peft": adapters.OPTIONAL_PEFT,
        "loss": ConfigKey(
            component=True, required=True, doc="tt_recipes.losses.BradleyTerryLoss (margin)"
        ),
    },
)


def recipe_main(cfg: DictConfig) -> None:
    if not cfg.checkpointer.get("checkpoint_dir"):
        raise ValueError(
            "reward_model starts from a trained model: set checkpointer.checkpoint_dir (a "
            "causal LM, whose decoder gets a new score head, or an earlier reward model)"
        )
    with trainer.distributed(cfg) as dist:
        objective = trainer.Objective(batch_loss=pair_loss, units=pairs, collate=collate_pairs)
        run = trainer.setup(cfg, dist, objective=objective, plan=scoring.scorer_plan(cfg))
        trainer.train(run)


def pair_loss(run: Run, batch: Batch) -> BatchLoss:
    """Bradley-Terry losses summed over the batch's pairs; accuracy and margin beside."""
    with trainer.offloaded_activations(run):
        scores = run.model(batch["tokens"])  # [2b, s, 1]
    ends = scoring.at_end_of_turn(scores, batch, run.tokenizer.pad_id, run.tokenizer.stop_tokens)
    rewards = ends[:, 0]
    chosen, rejected = rewards.chunk(2)
    losses = run.loss_fn(chosen, rejected)
    chosen, rejected = chosen.detach(), rejected.detach()
    metrics = {
        "accuracy": float((chosen > rejected).sum()),
        "margin": float((chosen - rejected).sum()),
        "chosen": float(chosen.sum()),
        "rejected": float(rejected.sum()),
    }
    return BatchLoss(losses.sum(), metrics)
