"""Knowledge distillation: a frozen teacher's next-token distributions join the labels as
targets (``tt_recipes.losses.KDLoss``: ``(1 - kd_ratio) * CE + kd_ratio * KL``).

The student is whatever the run trains: a checkpoint, a randomly initialised ``model``, or
either with adapters (a ``peft`` section). The teacher is loaded from ``teacher.checkpoint_dir``,
frozen, and sharded like the student under torchrun. Both must share the tokenizer's vocabulary.
Validation reports the student's cross-entropy on the labels as ``val_loss`` (comparable with
a run on the labels alone) and its KL to the teacher as ``val_kl``.

    tt run knowledge_distillation --config tiny/kd
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from omegaconf import DictConfig

from tt_recipes import adapters, trainer, training
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.losses import shift_labels
from tt_recipes.trainer import Batch, BatchLoss, Run

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="knowledge_distillation",
    description="Distil a frozen teacher into a student (full or LoRA) on 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "teacher": ConfigKey(
            keys={"checkpoint_dir": ConfigKey(str, required=True, doc="HF dir or earlier run")},
            required=True,
            doc="the frozen model whose distributions the student learns",
        ),
        "peft": adapters.OPTIONAL_PEFT,
        "save_adapter_weights_only": adapters.SAVE_ADAPTER_ONLY,
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.losses.KDLoss (kd_ratio, temperature, num_chunks)",
        ),
    },
    checks=(adapters.check_save_adapter_only,),
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        source = training.resolve_checkpoint_dir(cfg.teacher.checkpoint_dir)
        teacher = training.frozen_model(cfg, dist, source)
        _, teacher_params = training.count_parameters(teacher)
        log.info(f"Teacher: {source}, {teacher_params / 1e6:.2f}M parameters, frozen")
        objective = trainer.Objective(batch_loss=partial(kd_loss, teacher=teacher), val_loss="ce")
        run = trainer.setup(cfg, dist, objective=objective, plan=adapters.model_plan(cfg))
        check_vocabularies(run.model, teacher, source)
        trainer.train(run)


def check_vocabularies(student: torch.nn.Module, teacher: torch.nn.Module, source) -> None:
    ours, theirs = student.config.vocab_size, teacher.config.vocab_size
    if ours != theirs:
        raise ValueError(
            f"teacher.checkpoint_dir={str(source)!r} has a vocabulary of {theirs} tokens, the "
            f"student {ours}: distillation compares distributions over the same tokens, so both "
            "must use the same tokenizer"
        )


def kd_loss(run: Run, batch: Batch, teacher: torch.nn.Module) -> BatchLoss:
    """The distillation loss summed over the labelled tokens, with its CE and KL parts."""
    with torch.no_grad():
        teacher_hidden = trainer.hidden_states(teacher, batch)
    hidden = trainer.forward_hidden(run, batch)
    total, ce, kl = run.loss_fn(
        hidden,
        run.model.logits_from_hidden,
        teacher_hidden,
        teacher.logits_from_hidden,
        shift_labels(batch["labels"]),
    )
    return BatchLoss(total, {"ce": ce.item(), "kl": kl.item()})
