"""Full-parameter fine-tuning of a decoder, on one device or on N processes (FSDP2).

Read top to bottom: ``recipe_main`` sets up the run, ``train`` is the loop. ``lora_finetune``
reuses this loop with adapters attached (only model preparation and saving differ);
``dpo``, ``knowledge_distillation`` and ``qat_finetune`` reuse it with their own objective
(``forward_backward``) or model preparation. The same
code runs in one process and under torchrun: with a process group the model is sharded per
transformer block, each rank reads its share of every batch, and the loss is normalised by the
trained tokens of all ranks, so N processes x batch b follow 1 process x batch N*b.

    tt run full_finetune --config tiny/full
    tt run --nproc_per_node 2 full_finetune --config tiny/full batch_size=16
    tt run full_finetune --config llama3_2/1B_full checkpointer.checkpoint_dir=ckpts/Llama-3.2-1B
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tt_ckpt import atomic_directory
from tt_data import padded_collate_packed, padded_collate_sft

from tt_recipes import training
from tt_recipes.config import ConfigKey, RecipeSpec, instantiate
from tt_recipes.losses import IGNORE_INDEX, ChunkedCrossEntropy, shift_labels
from tt_recipes.metric_logging import StdoutLogger
from tt_recipes.pretrained import save_pretrained

log = logging.getLogger("tt")

TRAINING_STATE_DIR = "training_state"

# Keys shared by every supervised fine-tuning recipe (lora_finetune adds ``peft``).
SFT_KEYS: dict[str, ConfigKey] = {
    "output_dir": ConfigKey(str, required=True, doc="where checkpoints and logs go"),
    "model": ConfigKey(
        component=True,
        doc="architecture to build with random weights "
        "(unused when checkpointer.checkpoint_dir is set)",
    ),
    "tokenizer": ConfigKey(component=True, required=True, doc="tokenizer builder"),
    "checkpointer": ConfigKey(
        keys={
            "checkpoint_dir": ConfigKey(str | None, doc="HF model dir or earlier run"),
            "checkpoint_files": ConfigKey(list | None, doc="weight files (discovered)"),
            "output_dir": ConfigKey(str | None, doc="defaults to output_dir"),
            "max_shard_size": ConfigKey(str, default="5GB", doc="safetensors shard size"),
        },
        default={},
        doc="where weights come from and how they are saved",
    ),
    "dataset": ConfigKey(
        component=True,
        required=True,
        positional=1,
        doc="dataset component (called with the tokenizer), or a list",
    ),
    "seed": ConfigKey(int, default=0),
    "shuffle": ConfigKey(bool, default=True),
    "batch_size": ConfigKey(int, default=1, doc="samples per micro-batch per process"),
    "epochs": ConfigKey(int, default=1),
    "max_steps_per_epoch": ConfigKey(int | None, default=None),
    "gradient_accumulation_steps": ConfigKey(int, default=1),
    "optimizer": ConfigKey(component=True, required=True, positional=1),
    "lr_scheduler": ConfigKey(
        component=True, positional=2, doc="called with (optimizer, num_training_steps)"
    ),
    "loss": ConfigKey(component=True, doc="defaults to tt_recipes.losses.ChunkedCrossEntropy"),
    "clip_grad_norm": ConfigKey(float | None, default=None),
    "dtype": ConfigKey(str, default="fp32", doc="fp32 | bf16"),
    "device": ConfigKey(str, default="auto", doc="auto | cpu | cuda"),
    "compile": ConfigKey(bool, default=False, doc="torch.compile each transformer block"),
    "enable_activation_checkpointing": ConfigKey(bool, default=False),
    "save_every_n_steps": ConfigKey(int | None, default=None, doc="also saved at the end"),
    "keep_last_n_checkpoints": ConfigKey(int | None, default=None),
    "resume_from_checkpoint": ConfigKey(bool, default=False),
    "dataset_val": ConfigKey(component=True, positional=1, doc="validation dataset"),
    "run_val_every_n_steps": ConfigKey(int | None, default=None),
    "metric_logger": ConfigKey(component=True, doc="defaults to stdout"),
    "log_every_n_steps": ConfigKey(int, default=1),
    "log_peak_memory_stats": ConfigKey(bool, default=True),
    # Multi-process (torchrun) settings; ignored in a single process.
    "fsdp_reshard_after_forward": ConfigKey(
        bool, default=True, doc="free gathered block weights after forward (less memory)"
    ),
    "fsdp_cpu_offload": ConfigKey(bool, default=False, doc="params/grads/optimizer in CPU RAM"),
    "custom_sharded_layers": ConfigKey(
        list | None, default=None, doc="extra modules to shard on their own, e.g. [output]"
    ),
    "enable_activation_offloading": ConfigKey(
        bool, default=False, doc="keep saved activations in CPU RAM (CUDA)"
    ),
    "optimizer_in_bwd": ConfigKey(
        bool, default=False, doc="step each parameter during backward and free its gradient"
    ),
}

SPEC = RecipeSpec(
    name="full_finetune",
    description="Full-parameter supervised fine-tuning on 1..N processes; exact resume.",
    keys=SFT_KEYS,
)


@dataclass
class StepResult:
    """What one optimizer step's forward/backward passes report, summed over all ranks."""

    loss: float  # the loss as normalised for the gradient (per trained token for SFT)
    tokens: int  # tokens processed (padding included), for throughput
    metrics: dict[str, float] = field(default_factory=dict)  # logged beside the loss


@dataclass
class Run:
    """Everything the loop needs, built once by ``setup``."""

    cfg: DictConfig
    model: torch.nn.Module
    tokenizer: Any
    optimizer: Any  # a torch Optimizer, or tt_dist.OptimizerInBackward
    # The optimizer the lr schedule drives (the first per-parameter one in backward mode).
    schedule_optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[..., torch.Tensor]
    loader: Any
    sampler: Any
    val_loader: Any
    logger: Any
    dist: tt_dist.DistInfo
    steps_per_epoch: int
    total_steps: int
    # Writes the model into a checkpoint directory (rank 0), given the gathered full state
    # dict when the model is sharded (None in a single process).
    save_model: Callable[[Run, Path, dict | None], None]
    # True when only trainable parameters go into the resumable state (adapters).
    trainable_state_only: bool = False
    # Forward and backward over one step's micro-batches (another objective replaces it, e.g.
    # DPO), and the validation pass; both default to supervised fine-tuning.
    forward_backward: Callable[[Run, list[dict[str, torch.Tensor]]], StepResult] = field(
        default=lambda run, micro_batches: sft_forward_backward(run, micro_batches)
    )
    evaluate: Callable[[Run], dict[str, float]] = field(default=lambda run: validate(run))
    step: int = 0
    history: list[float] = field(default_factory=list)


def recipe_main(cfg: DictConfig) -> None:
    try:
        run = setup(cfg, prepare_model=None, save_model=save_full_model)
        train(run)
    finally:
        tt_dist.destroy_distributed()


def setup(
    cfg: DictConfig,
    *,
    prepare_model: Callable[[torch.nn.Module, DictConfig], torch.nn.Module] | None,
    save_model: Callable[[Run, Path, dict | None], None],
    trainable_state_only: bool = False,
    collate: Callable[..., dict[str, torch.Tensor]] | None = None,
) -> Run:
    """Processes, model (+ ``prepare_model``), data, optimizer, schedule, loss, logger, resume.

    ``prepare_model`` attaches adapters (or anything else) before sharding. A multi-process
    run from a checkpoint builds the model on the meta device, shards it and lets each rank
    materialise only its own shards of the weights (NF4 QLoRA bases included). ``collate``
    (called with a list of samples and ``pad_id=``) defaults to padded/packed SFT batches.
    """
    training.setup_logging()
    dist = tt_dist.init_distributed(device=cfg.device)
    torch.manual_seed(cfg.seed)  # same seed on every rank: identical random init everywhere
    device = dist.device
    dtype = training.get_dtype(cfg.dtype, device)

    if dist.is_distributed and cfg.checkpointer.get("checkpoint_dir"):
        model = training.load_sharded_model(cfg, device, dtype, prepare_model)
    else:
        model = training.build_model(cfg, device, dtype)
        if prepare_model is not None:
            model = prepare_model(model, cfg)
        if cfg.enable_activation_checkpointing:
            training.enable_activation_checkpointing(model)
        if dist.is_distributed:
            training.shard(model, cfg)
    trainable, total = training.count_parameters(model)
    if cfg.compile:
        training.compile_blocks(model)
    where = f"{dist.world_size} processes ({dist.backend})" if dist.is_distributed else device
    log.info(
        f"Model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable, "
        f"{dtype}, on {where}"
    )

    tokenizer = instantiate(cfg.tokenizer)
    collate = partial(collate or _collate, pad_id=tokenizer.pad_id)
    dataset = training.build_dataset(cfg.dataset, tokenizer)
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    loader, sampler = training.build_dataloader(
        dataset,
        batch_size=cfg.batch_size,
        collate_fn=collate,
        seed=cfg.seed,
        shuffle=cfg.shuffle,
        **shard,
    )
    val_loader = None
    if cfg.get("dataset_val") is not None:
        val_set = training.build_dataset(cfg.dataset_val, tokenizer)
        val_loader, _ = training.build_dataloader(
            val_set,
            batch_size=cfg.batch_size,
            collate_fn=collate,
            seed=cfg.seed,
            shuffle=False,
            **shard,
        )

    steps_per_epoch = len(loader) // cfg.gradient_accumulation_steps
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the dataset has {len(dataset)} samples: fewer than one optimizer step of "
            f"batch_size={cfg.batch_size} x gradient_accumulation_steps="
            f"{cfg.gradient_accumulation_steps}"
        )
    total_steps = steps_per_epoch * cfg.epochs

    optimizer, schedule_optimizer = build_optimizer(model, cfg)
    scheduler = (
        instantiate(cfg.lr_scheduler, schedule_optimizer, total_steps)
        if cfg.get("lr_scheduler") is not None
        else None
    )
    share_scheduled_lr(optimizer, scheduler)
    loss_fn = instantiate(cfg.loss) if cfg.get("loss") is not None else ChunkedCrossEntropy()
    logger = (
        instantiate(cfg.metric_logger) if cfg.get("metric_logger") is not None else StdoutLogger()
    )
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))

    run = Run(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        schedule_optimizer=schedule_optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        loader=loader,
        sampler=sampler,
        val_loader=val_loader,
        logger=logger,
        dist=dist,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        save_model=save_model,
        trainable_state_only=trainable_state_only,
    )
    if cfg.resume_from_checkpoint:
        resume(run)
    log.info(
        f"Training: {cfg.epochs} epoch(s) x {steps_per_epoch} steps, "
        f"{len(dataset)} samples, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}"
        f" accumulation x {dist.world_size} process(es)"
    )
    return run


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> tuple[Any, torch.optim.Optimizer]:
    """The optimizer over trainable parameters, and the one an lr schedule should drive."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.optimizer_in_bwd:
        optimizer = instantiate(cfg.optimizer, params)
        return optimizer, optimizer
    if cfg.clip_grad_norm is not None:
        raise ValueError(
            f"optimizer_in_bwd=True cannot clip gradients (clip_grad_norm={cfg.clip_grad_norm}): "
            "each parameter steps as soon as its own gradient exists, before a global norm "
            "could be known. Set clip_grad_norm=null or optimizer_in_bwd=false"
        )
    optimizer = tt_dist.optimizer_in_backward(
        model, lambda group: instantiate(cfg.optimizer, group), cfg.gradient_accumulation_steps
    )
    return optimizer, optimizer.optimizers[0]


def share_scheduled_lr(optimizer: Any, scheduler: Any) -> None:
    """With optimizer_in_bwd the schedule drives the first per-parameter optimizer; copy its
    lr to all of them (at creation too: LambdaLR sets the warmup lr of step 0 immediately)."""
    if scheduler is not None and isinstance(optimizer, tt_dist.OptimizerInBackward):
        optimizer.set_lr(scheduler.get_last_lr()[0])


def train(run: Run) -> None:
    """The loop: for each optimizer step, take ``gradient_accumulation_steps`` micro-batches,
    normalise the loss by the trained tokens of the whole step, clip, step, log, save."""
    cfg = run.cfg
    ga = cfg.gradient_accumulation_steps
    start_epoch, start_in_epoch = divmod(run.step, run.steps_per_epoch)
    progress = tqdm(
        total=run.total_steps,
        initial=run.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=run.dist.rank != 0,
    )
    window_start, window_tokens = time.perf_counter(), 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            first = start_in_epoch if epoch == start_epoch else 0
            run.sampler.set_epoch(epoch, start_index=first * ga * cfg.batch_size)
            batches = iter(run.loader)
            for _ in range(first, run.steps_per_epoch):
                micro_batches = [next(batches) for _ in range(ga)]
                result, grad_norm = optimizer_step(run, micro_batches)
                run.step += 1
                window_tokens += result.tokens
                progress.update(1)
                progress.set_postfix(loss=f"{result.loss:.4f}")
                training.check_finite(result.loss, run.step, cfg.output_dir)
                run.history.append(result.loss)
                if run.step % cfg.log_every_n_steps == 0 or run.step == 1:
                    elapsed = time.perf_counter() - window_start
                    log_metrics(run, result, grad_norm, window_tokens / max(elapsed, 1e-9))
                    window_start, window_tokens = time.perf_counter(), 0
                if _due(run.step, cfg.run_val_every_n_steps) and run.val_loader is not None:
                    run.logger.log_dict(run.evaluate(run), step=run.step)
                if _due(run.step, cfg.save_every_n_steps) and run.step < run.total_steps:
                    save_checkpoint(run)
        save_checkpoint(run)
    finally:
        progress.close()
        run.logger.close()


def optimizer_step(
    run: Run, micro_batches: list[dict[str, torch.Tensor]]
) -> tuple[StepResult, float | None]:
    """``run.forward_backward`` over every micro-batch, then clip, step and schedule.

    Returns the step's result and the gradient norm before clipping (None without clipping).
    """
    model, cfg = run.model, run.cfg
    result = run.forward_backward(run, micro_batches)
    grad_norm = None
    if cfg.clip_grad_norm is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = training.full_value(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm))
    run.optimizer.step()  # no-op with optimizer_in_bwd: every parameter stepped in backward
    run.optimizer.zero_grad(set_to_none=True)
    if run.scheduler is not None:
        run.scheduler.step()
        share_scheduled_lr(run.optimizer, run.scheduler)
    return result, grad_norm


def hidden_states(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A decoder's last hidden states for a padded or packed batch (mask, positions)."""
    return model(
        batch["tokens"],
        mask=batch.get("mask"),
        input_pos=batch.get("input_pos"),
        return_hidden=True,
    )


def forward_hidden(run: Run, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trained model's hidden states, its activations offloaded when configured."""
    with tt_dist.activation_offloading(run.cfg.enable_activation_offloading, run.dist.device):
        return hidden_states(run.model, batch)


def sft_forward_backward(run: Run, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
    """Cross-entropy on the labelled tokens, normalised over the whole step.

    Each micro-batch's summed loss is divided by the trained tokens of ALL micro-batches of
    the step on ALL ranks, so the gradient is the mean over tokens however the batch is split
    (FSDP averages gradients over ranks, hence the ``world_size`` factor). The loss's saved
    tensors are the first that backward reads, so they are not offloaded.
    """
    world = run.dist.world_size
    trained = trained_tokens(run, micro_batches)
    total_loss = 0.0
    for batch in micro_batches:
        batch = {k: v.to(run.dist.device) for k, v in batch.items()}
        hidden = forward_hidden(run, batch)
        targets = shift_labels(batch["labels"])
        loss_sum = run.loss_fn(hidden, run.model.logits_from_hidden, targets)
        (loss_sum * (world / trained)).backward()
        total_loss += loss_sum.item()
    return StepResult(
        loss=training.sum_over_ranks(total_loss) / trained, tokens=step_tokens(micro_batches)
    )


def trained_tokens(run: Run, micro_batches: list[dict[str, torch.Tensor]]) -> int:
    """Labelled tokens of the whole step on all ranks: what token-level losses divide by."""
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    trained = int(training.sum_over_ranks(local))
    if trained == 0:
        raise ValueError(
            f"step {run.step + 1}: no trained tokens in the batch (all labels "
            "masked); check the dataset's masking / train_on_input settings"
        )
    return trained


def step_tokens(micro_batches: list[dict[str, torch.Tensor]]) -> int:
    """Tokens processed in the step (padding included) on all ranks, for throughput."""
    return int(training.sum_over_ranks(sum(int(b["tokens"].numel()) for b in micro_batches)))


@torch.no_grad()
def validate(run: Run, loss_fn: Callable[..., torch.Tensor] | None = None) -> dict[str, float]:
    """``val_loss``: mean loss per trained token over the whole validation set (``loss_fn``,
    called like the SFT loss, defaults to the run's)."""
    loss_fn = loss_fn or run.loss_fn
    run.model.eval()
    total, count = 0.0, 0
    for batch in run.val_loader:
        batch = {k: v.to(run.dist.device) for k, v in batch.items()}
        hidden = hidden_states(run.model, batch)
        targets = shift_labels(batch["labels"])
        total += loss_fn(hidden, run.model.logits_from_hidden, targets).item()
        count += int((targets != IGNORE_INDEX).sum())
    run.model.train()
    return {"val_loss": training.sum_over_ranks(total) / max(training.sum_over_ranks(count), 1)}


def log_metrics(run: Run, result: StepResult, grad_norm: float | None, tokens_per_s: float) -> None:
    metrics = {
        "loss": result.loss,
        **result.metrics,
        "lr": run.schedule_optimizer.param_groups[0]["lr"],
        "tokens_per_s": tokens_per_s,
    }
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    if run.cfg.log_peak_memory_stats:
        metrics["peak_memory_gib"] = training.peak_memory_gib(run.dist.device)
    run.logger.log_dict(metrics, step=run.step)


# ---------------------------------------------------------------------------------------------
# Checkpoints: output_dir/step_N/ = HF model files (+ adapter/ for LoRA) + training_state/
# (a torch.distributed.checkpoint of model/optimizer shards, so a run resumes on any number of
# processes, plus step, schedule, RNG and loss history). Everything is written under hidden
# names and renamed into place when complete.


def save_checkpoint(run: Run) -> Path:
    """All ranks call this: they write their shards, rank 0 writes the HF files."""
    out_root = Path(run.cfg.checkpointer.get("output_dir") or run.cfg.output_dir)
    final = training.step_dir(out_root, run.step)
    full_sd = tt_dist.gather_full_state_dict(run.model) if run.dist.is_distributed else None
    staged_state = out_root / f".{final.name}.state"
    extra = {
        "step": run.step,
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "rng": training.rng_state(),
        "loss_history": run.history,
        "global_batch_size": global_batch_size(run),
    }
    tt_dist.save_distributed_state(
        staged_state, run.model, run.optimizer, extra, trainable_only=run.trainable_state_only
    )
    if run.dist.rank == 0:
        with atomic_directory(final) as tmp:
            run.save_model(run, tmp, full_sd)
            os.replace(staged_state, tmp / TRAINING_STATE_DIR)
        log.info(f"Saved checkpoint {final}")
        training.prune_checkpoints(out_root, run.cfg.keep_last_n_checkpoints)
    training.barrier()
    return final


def global_batch_size(run: Run) -> int:
    return run.cfg.batch_size * run.cfg.gradient_accumulation_steps * run.dist.world_size


def save_full_model(run: Run, directory: Path, full_sd: dict | None) -> None:
    save_hf_model(run, directory, state_dict=full_sd)


def save_hf_model(run: Run, directory: Path, **kwargs: Any) -> None:
    """The model as a HF directory, with config fields and tokenizer files from its source
    (the checkpoint it started from, else the tokenizer's directory)."""
    save_pretrained(
        run.model,
        directory,
        source_dir=source_dir(run.cfg),
        max_shard_size=run.cfg.checkpointer.max_shard_size,
        config_updates=training.token_id_config(run.tokenizer),
        **kwargs,
    )


def source_dir(cfg: DictConfig) -> Path | str | None:
    checkpoint_dir = cfg.checkpointer.get("checkpoint_dir")
    if checkpoint_dir:
        return training.resolve_checkpoint_dir(checkpoint_dir)
    return cfg.tokenizer.get("path")


def resume(run: Run) -> None:
    """Restore weights, optimizer, schedule, RNG, data position and step from the latest
    checkpoint (written by any number of processes: the shards are redistributed)."""
    out_root = run.cfg.checkpointer.get("output_dir") or run.cfg.output_dir
    training.remove_unfinished_saves(out_root)
    latest = training.latest_step_dir(out_root)
    if latest is None:
        raise FileNotFoundError(
            f"resume_from_checkpoint=True but {out_root} holds no complete step_N checkpoint; "
            "start without resume_from_checkpoint or point output_dir at the earlier run"
        )
    extra = tt_dist.load_distributed_state(
        latest / TRAINING_STATE_DIR,
        run.model,
        run.optimizer,
        trainable_only=run.trainable_state_only,
    )
    if extra["global_batch_size"] != global_batch_size(run):
        raise ValueError(
            f"{latest} was trained with a global batch of {extra['global_batch_size']} samples "
            f"per step; this run has {global_batch_size(run)} (batch_size x "
            "gradient_accumulation_steps x processes). Keep the global batch the same to resume "
            "exactly, e.g. batch_size=4 on 2 processes -> batch_size=8 on 1."
        )
    if run.scheduler is not None and extra["scheduler"] is not None:
        run.scheduler.load_state_dict(extra["scheduler"])
    training.set_rng_state(extra["rng"])
    run.step = extra["step"]
    run.history = list(extra["loss_history"])
    log.info(f"Resumed from {latest} at step {run.step}")


# ---------------------------------------------------------------------------------------------


def _collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    if "document_ids" in batch[0]:
        return padded_collate_packed(batch)
    return padded_collate_sft(batch, pad_id=pad_id)


def _due(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0
