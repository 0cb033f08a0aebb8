"""Knowledge distillation: the ``full_finetune`` loop where a frozen teacher's next-token
distributions join the labels as targets (``tt_recipes.losses.KDLoss``).

The student is whatever the run trains: a checkpoint, a randomly initialised ``model``, or
either with adapters (a ``peft`` section). The teacher is loaded from ``teacher.checkpoint_dir``,
frozen, and sharded like the student under torchrun. Both must share the tokenizer's vocabulary.

    tt run knowledge_distillation --config tiny/kd
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import tt_dist
from omegaconf import DictConfig

from tt_recipes import training
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.losses import ChunkedCrossEntropy, shift_labels
from tt_recipes.recipes import full_finetune, lora_finetune
from tt_recipes.recipes.full_finetune import Run, StepResult, forward_hidden

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="knowledge_distillation",
    description="Distil a frozen teacher into a student (full or LoRA) on 1..N processes.",
    keys={
        **full_finetune.SFT_KEYS,
        "teacher": ConfigKey(
            keys={"checkpoint_dir": ConfigKey(str, required=True, doc="HF dir or earlier run")},
            required=True,
            doc="the frozen model whose distributions the student learns",
        ),
        "peft": lora_finetune.OPTIONAL_PEFT,
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.losses.KDLoss (kd_ratio, temperature, num_chunks)",
        ),
    },
)


def recipe_main(cfg: DictConfig) -> None:
    try:
        run = full_finetune.setup(cfg, **lora_finetune.optional_adapters(cfg))
        source = training.resolve_checkpoint_dir(cfg.teacher.checkpoint_dir)
        teacher = training.frozen_model(cfg, run.dist, source)
        check_vocabularies(run.model, teacher, source)
        _, teacher_params = training.count_parameters(teacher)
        log.info(f"Teacher: {source}, {teacher_params / 1e6:.2f}M parameters, frozen")
        run.forward_backward = partial(kd_forward_backward, teacher=teacher)
        # validation reports the student's cross-entropy on the labels, comparable across runs
        labels_only = ChunkedCrossEntropy(num_chunks=run.loss_fn.num_chunks)
        run.evaluate = partial(full_finetune.validate, loss_fn=labels_only)
        full_finetune.train(run)
    finally:
        tt_dist.destroy_distributed()


def check_vocabularies(student: torch.nn.Module, teacher: torch.nn.Module, source) -> None:
    ours, theirs = student.config.vocab_size, teacher.config.vocab_size
    if ours != theirs:
        raise ValueError(
            f"teacher.checkpoint_dir={str(source)!r} has a vocabulary of {theirs} tokens, the "
            f"student {ours}: distillation compares distributions over the same tokens, so both "
            "must use the same tokenizer"
        )


def kd_forward_backward(
    run: Run, micro_batches: list[dict[str, torch.Tensor]], teacher: torch.nn.Module
) -> StepResult:
    """The KD loss normalised by the trained tokens of the whole step on all ranks (as SFT)."""
    world = run.dist.world_size
    trained = full_finetune.trained_tokens(run, micro_batches)
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
    for batch in micro_batches:
        batch = {k: v.to(run.dist.device) for k, v in batch.items()}
        with torch.no_grad():
            teacher_hidden = full_finetune.hidden_states(teacher, batch)
        hidden = forward_hidden(run, batch)
        total, ce, kl = run.loss_fn(
            hidden,
            run.model.logits_from_hidden,
            teacher_hidden,
            teacher.logits_from_hidden,
            shift_labels(batch["labels"]),
        )
        (total * (world / trained)).backward()
        for name, value in (("loss", total), ("ce", ce), ("kl", kl)):
            sums[name] += value.item()
    means = {name: training.sum_over_ranks(value) / trained for name, value in sums.items()}
    return StepResult(
        loss=means.pop("loss"), tokens=full_finetune.step_tokens(micro_batches), metrics=means
    )
