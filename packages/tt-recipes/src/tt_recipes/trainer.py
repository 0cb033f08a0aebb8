"""The training engine the recipes compose.

``setup`` builds a run's state once; ``train`` is the step loop over a fixed dataset (SFT,
LoRA, DPO, distillation, QAT); ``forward_backward`` and ``optimizer_step`` are its two halves,
for recipes that drive their own loop (RL: rollouts, then several optimizer steps on them).

A recipe customises the engine with two small frozen records, passed to ``setup`` once:

- an :class:`Objective`: what one micro-batch's loss is (written once, for training and
  validation), what it is normalised by, and how samples are collated;
- a :class:`ModelPlan`: what is done to the model before training (adapters, fake
  quantization) and how it is exported into each checkpoint.

The same code runs in one process and under torchrun: with a process group the model is
sharded per transformer block, each rank reads its share of every batch, and losses are
normalised by the units (trained tokens, pairs) of all micro-batches on all ranks, so
N processes x batch b follow 1 process x batch N*b.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tt_data import padded_collate_packed, padded_collate_sft, padded_collate_vision
from tt_models import RouterLosses, block_causal_mask, moe_blocks, take_balance
from tt_models.generation import IMAGE_KEYS

from tt_recipes import checkpointing, console, interrupts, metric_logging, profiling, training
from tt_recipes.config import (
    COMPONENT_KEY,
    DEVICE_KEY,
    LOG_LEVEL_KEY,
    TRAINING_DTYPES,
    ConfigKey,
    instantiate,
    resolve_component,
)
from tt_recipes.losses import IGNORE_INDEX, ChunkedCrossEntropy, shift_labels
from tt_recipes.metric_logging import StdoutLogger

log = logging.getLogger("tt")

# Keys every fixed-dataset training recipe reads (recipes add theirs: peft, loss, teacher...).
TRAINING_KEYS: dict[str, ConfigKey] = {
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
    "batch_size": ConfigKey(int, default=1, min=1, doc="samples per micro-batch per process"),
    "epochs": ConfigKey(int, default=1, min=1),
    "max_steps_per_epoch": ConfigKey(int | None, default=None, min=1),
    "gradient_accumulation_steps": ConfigKey(int, default=1, min=1),
    "optimizer": ConfigKey(
        component=True, required=True, positional=1, args={"lr": ConfigKey(float, min=0)}
    ),
    "lr_scheduler": ConfigKey(
        component=True, positional=2, doc="called with (optimizer, num_training_steps)"
    ),
    "loss": ConfigKey(component=True, doc="defaults to tt_recipes.losses.ChunkedCrossEntropy"),
    "clip_grad_norm": ConfigKey(float | None, default=None, min=0),
    "freeze": ConfigKey(
        list,
        default=[],
        choices=training.FREEZE_CHOICES,
        doc="parts of a vision model that do not train (nor take adapters): encoder, decoder; "
        "the fusion layers (cross-attention, the encoder's projection) always train",
    ),
    "moe_loss": ConfigKey(
        keys={
            "aux_loss_coef": ConfigKey(
                float, default=0.001, min=0, doc="load balancing (router_aux_loss_coef)"
            ),
            "z_loss_coef": ConfigKey(
                float, default=0.0, min=0, doc="ST-MoE's router z-loss (router_z_loss_coef)"
            ),
        },
        default={},
        doc="weights of a mixture-of-experts model's router losses (dense models have none)",
    ),
    "dtype": ConfigKey(
        str, default="fp32", choices=TRAINING_DTYPES, doc="fp32 | bf16 (fp16 needs loss scaling)"
    ),
    "device": DEVICE_KEY,
    "log_level": LOG_LEVEL_KEY,
    "compile": ConfigKey(bool, default=False, doc="torch.compile each transformer block"),
    "enable_activation_checkpointing": ConfigKey(bool, default=False),
    "save_every_n_steps": ConfigKey(int | None, default=None, min=1, doc="also saved at the end"),
    "keep_last_n_checkpoints": ConfigKey(int | None, default=None, min=1),
    "save_final_training_state": ConfigKey(
        bool,
        default=True,
        doc="false: the last checkpoint holds the model only (smaller; it cannot be resumed)",
    ),
    "resume_from_checkpoint": ConfigKey(bool, default=False),
    "dataset_val": ConfigKey(component=True, positional=1, doc="validation dataset"),
    "run_val_every_n_steps": ConfigKey(int | None, default=None, min=1),
    "metric_logger": ConfigKey(component=True, doc="defaults to stdout"),
    "log_every_n_steps": ConfigKey(int, default=1, min=1),
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
    "profiler": profiling.PROFILER_KEY,
}


# ---------------------------------------------------------------------------------------------
# What a recipe plugs in


@dataclass(frozen=True)
class BatchLoss:
    """One micro-batch's loss, summed over its units (with its graph while training), and
    metrics: a float is summed the same way (logged as its mean per unit), a ``(sum, count)``
    pair is a mean over its own count (e.g. per token when the units are sequences)."""

    loss: torch.Tensor
    metrics: dict[str, float | tuple[float, float]] = field(default_factory=dict)


Batch = dict[str, torch.Tensor]


def collate_sft(
    samples: list[dict[str, Any]], pad_id: int, images: dict[str, int] | None = None
) -> Batch:
    """Padded SFT batches, packed rows when the dataset is packed, and the images of a
    multimodal dataset's samples (``images``: ``padded_collate_vision``'s settings for the
    model, from ``training.image_collation``)."""
    if "document_ids" in samples[0]:
        return padded_collate_packed(samples)
    if "images" in samples[0]:
        if images is None:
            raise ValueError(
                "the dataset's samples hold images, but the model has no image encoder (a "
                "vision model's config.json has a vision_config, e.g. Llama 3.2 Vision)"
            )
        return padded_collate_vision(samples, pad_id, **images)
    return padded_collate_sft(samples, pad_id=pad_id)


def trained_tokens(batch: Batch) -> int:
    """Labelled tokens of a batch (what token-level losses are normalised by)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class Objective:
    """What a recipe trains for.

    Args:
        batch_loss: ``(run, batch) -> BatchLoss``: the loss summed over the batch's units;
            used for training (its graph is backpropagated) and validation (under no_grad).
        units: what a batch's loss is a sum over (trained tokens, preference pairs): the
            step's loss is divided by the units of all its micro-batches on all ranks.
        collate: ``(samples, pad_id) -> batch``.
        val_loss: which summed value validation reports as ``val_loss`` ("loss", or a metric
            such as distillation's "ce", comparable with a run trained on the labels alone).
    """

    batch_loss: Callable[[Run, Batch], BatchLoss]
    units: Callable[[Batch], int] = trained_tokens
    collate: Callable[..., Batch] = collate_sft
    val_loss: str = "loss"


@dataclass(frozen=True)
class ModelPlan:
    """What the model trained by a run is and how it is saved.

    Args:
        prepare: ``(model, cfg) -> model`` run on the loaded model before sharding (adapters,
            fake quantization); None for plain full training.
        exporter: ``(model, cfg, tokenizer) -> checkpointing.Exporter`` writing the model into
            each checkpoint (full weights as HF files; merged model + PEFT adapter).
        trainable_only: the resumable state holds only trainable parameters (the frozen base
            comes back from ``checkpoint_dir``).
    """

    prepare: Callable[[torch.nn.Module, DictConfig], torch.nn.Module] | None = None
    exporter: Callable[..., checkpointing.Exporter] = checkpointing.full_model_exporter
    trainable_only: bool = False


@dataclass
class StepResult:
    """What one optimizer step's forward/backward passes report, averaged over all ranks."""

    loss: float  # the loss as normalised for the gradient (per trained token for SFT)
    tokens: int  # tokens processed (padding included) on all ranks, for throughput
    metrics: dict[str, float] = field(default_factory=dict)  # logged beside the loss


@dataclass
class Progress:
    """Where a run is: its step, its losses so far and the global batch they were taken
    with (a stateful part of every checkpoint)."""

    global_batch_size: int
    step: int = 0
    history: list[float] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss_history": list(self.history),
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["global_batch_size"] != self.global_batch_size:
            raise ValueError(
                f"it was trained with a global batch of {state['global_batch_size']} samples "
                f"per step; this run has {self.global_batch_size} (batch_size x "
                "gradient_accumulation_steps x processes). Keep the global batch the same to "
                "resume exactly, e.g. batch_size=4 on 2 processes -> batch_size=8 on 1."
            )
        self.step = state["step"]
        self.history = list(state["loss_history"])


# ---------------------------------------------------------------------------------------------
# The run's state


@dataclass
class Run:
    """Everything a training run holds, built once by ``setup``."""

    cfg: DictConfig
    dist: tt_dist.DistInfo
    objective: Objective
    plan: ModelPlan
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
    steps_per_epoch: int
    total_steps: int
    progress: Progress
    # More parts saved in and restored from every checkpoint (e.g. a rollout position).
    extra_state: dict[str, checkpointing.Stateful] = field(default_factory=dict)
    # The model's mixture-of-experts blocks, whose router losses join the objective.
    moe_blocks: list[Any] = field(default_factory=list)


@contextmanager
def distributed(cfg: DictConfig) -> Iterator[tt_dist.DistInfo]:
    """Logging, the process group (under torchrun) and the device for the whole recipe;
    Ctrl-C and SIGTERM stop it cleanly (see ``tt_recipes.interrupts``)."""
    console.setup_logging(cfg.log_level)
    with interrupts.stop_on_signals():
        dist = tt_dist.init_distributed(device=cfg.device)
        try:
            yield dist
        except BaseException:
            # No barrier on the way out: other ranks may have stopped already.
            tt_dist.destroy_distributed(barrier=False)
            raise
        tt_dist.destroy_distributed()


def setup(
    cfg: DictConfig,
    dist: tt_dist.DistInfo,
    objective: Objective,
    plan: ModelPlan | None = None,
    *,
    loss_fn: Any = None,
    batches_per_step: int | None = None,
    optimizer_steps_per_step: int = 1,
) -> Run:
    """Model (+ ``plan.prepare``), data, optimizer, schedule, loss and logger (``train``
    resumes from a checkpoint when ``resume_from_checkpoint`` is set; a recipe with its own
    loop calls ``resume``).

    A multi-process run from a checkpoint builds the model on the meta device, shards it and
    lets each rank materialise only its own shards of the weights (NF4 QLoRA bases included).

    For a recipe whose steps are not one optimizer step over ``gradient_accumulation_steps``
    loader batches (RL: one batch of prompts, then ``num_iterations`` optimizer steps on its
    rollouts): ``batches_per_step`` loader batches make a step and the lr schedule runs
    ``optimizer_steps_per_step`` steps per step. ``loss_fn`` is a loss the recipe built
    itself (default: ``cfg.loss`` instantiated, else chunked cross-entropy).
    """
    plan = plan or ModelPlan()
    torch.manual_seed(cfg.seed)  # same seed on every rank: identical random init everywhere
    device = dist.device
    dtype = training.get_dtype(cfg.dtype, device)
    model = build_trained_model(cfg, dist, dtype, plan)
    trainable, total = training.count_parameters(model)
    where = f"{dist.world_size} processes ({dist.backend})" if dist.is_distributed else device
    log.info(
        f"Model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable, "
        f"{dtype}, on {where}"
    )

    tokenizer = instantiate(cfg.tokenizer)
    images = training.image_collation(model, tokenizer, dist)
    if images and objective.collate is not collate_sft:
        raise ValueError(
            "this recipe trains text models; a vision model (Llama 3.2 Vision) trains with "
            "full_finetune or lora_finetune"
        )
    collate = partial(objective.collate, pad_id=tokenizer.pad_id, **images)
    dataset = training.build_dataset(cfg.dataset, tokenizer)
    shard = {"rank": dist.rank, "world_size": dist.world_size, "device": device}
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

    ga = cfg.gradient_accumulation_steps if batches_per_step is None else batches_per_step
    steps_per_epoch = len(loader) // ga
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the dataset has {len(dataset)} samples: fewer than one optimizer step of "
            f"batch_size={cfg.batch_size} x gradient_accumulation_steps={ga}"
            + (f" x {dist.world_size} processes" if dist.is_distributed else "")
        )
    total_steps = steps_per_epoch * cfg.epochs

    optimizer, schedule_optimizer = build_optimizer(model, cfg)
    scheduler = (
        instantiate(cfg.lr_scheduler, schedule_optimizer, total_steps * optimizer_steps_per_step)
        if cfg.get("lr_scheduler") is not None
        else None
    )
    _share_scheduled_lr(optimizer, scheduler)
    if loss_fn is None:
        loss_fn = instantiate(cfg.loss) if cfg.get("loss") is not None else ChunkedCrossEntropy()
    logger = (
        instantiate(cfg.metric_logger) if cfg.get("metric_logger") is not None else StdoutLogger()
    )
    run = Run(
        cfg=cfg,
        dist=dist,
        objective=objective,
        plan=plan,
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
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        progress=Progress(global_batch_size=cfg.batch_size * ga * dist.world_size),
        moe_blocks=moe_blocks(model),
    )
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    log.info(
        f"Training: {cfg.epochs} epoch(s) x {steps_per_epoch} steps, "
        f"{len(dataset)} samples, batch {cfg.batch_size} x {ga} accumulation x "
        f"{dist.world_size} process(es)"
    )
    return run


def build_trained_model(
    cfg: DictConfig, dist: tt_dist.DistInfo, dtype: torch.dtype, plan: ModelPlan
) -> torch.nn.Module:
    """The model ``cfg`` trains, prepared by ``plan``, sharded under torchrun (from a
    checkpoint each process loads only its shards), checkpointed and compiled as configured."""
    if cfg.resume_from_checkpoint:
        log.info(
            f"Resuming the run in {checkpointing.checkpoint_root(cfg)}: the model is built, "
            "then its weights and the run's state come from the latest checkpoint"
        )
    prepare = plan.prepare
    if cfg.get("freeze"):
        prepare = partial(training.freeze_parts, prepare=plan.prepare)
    if dist.is_distributed and cfg.checkpointer.get("checkpoint_dir"):
        model = training.load_sharded_model(cfg, dist.device, dtype, prepare)
    else:
        model = training.build_model(cfg, dist.device, dtype)
        if prepare is not None:
            model = prepare(model, cfg)
        if cfg.enable_activation_checkpointing:
            training.enable_activation_checkpointing(model)
        if dist.is_distributed:
            training.shard(model, cfg)
    if cfg.compile:
        training.compile_blocks(model)
    return model


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> tuple[Any, torch.optim.Optimizer]:
    """The optimizer over trainable parameters, and the one an lr schedule should drive."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = fused_optimizer_default(cfg.optimizer, params)
    if not cfg.optimizer_in_bwd:
        optimizer = instantiate(cfg.optimizer, params, **fused)
        return optimizer, optimizer
    if cfg.clip_grad_norm is not None:
        raise ValueError(
            f"optimizer_in_bwd=True cannot clip gradients (clip_grad_norm={cfg.clip_grad_norm}): "
            "each parameter steps as soon as its own gradient exists, before a global norm "
            "could be known. Set clip_grad_norm=null or optimizer_in_bwd=false"
        )
    optimizer = tt_dist.optimizer_in_backward(
        model,
        lambda group: instantiate(cfg.optimizer, group, **fused),
        cfg.gradient_accumulation_steps,
    )
    return optimizer, optimizer.optimizers[0]


def fused_optimizer_default(
    optimizer_cfg: DictConfig, params: list[torch.Tensor]
) -> dict[str, bool]:
    """``{"fused": True}`` for a torch optimizer that has a fused kernel (Adam, AdamW, SGD,
    Adagrad) when the config chooses neither ``fused`` nor ``foreach``, else ``{}``.

    torch only defaults to ``foreach`` on CUDA and to the per-parameter loop elsewhere; the
    fused kernel updates every parameter in one pass over its memory: AdamW over 88M
    parameters on 2 CPU cores took 67 ms fused against 326 ms looped (fp32; 74 against
    374 ms in bf16, bench/README.md). Same update up to float rounding.
    """
    if "fused" in optimizer_cfg or "foreach" in optimizer_cfg:
        return {}
    target = resolve_component(optimizer_cfg[COMPONENT_KEY])
    if not (isinstance(target, type) and issubclass(target, torch.optim.Optimizer)):
        return {}
    if "fused" not in inspect.signature(target).parameters:
        return {}
    # torch's fused kernels exist for both devices tt trains on
    if not params or any(
        p.device.type not in ("cpu", "cuda") or not p.is_floating_point() for p in params
    ):
        return {}
    return {"fused": True}


def _share_scheduled_lr(optimizer: Any, scheduler: Any) -> None:
    """With optimizer_in_bwd the schedule drives the first per-parameter optimizer; copy its
    lr to all of them (at creation too: LambdaLR sets the warmup lr of step 0 immediately)."""
    if scheduler is not None and isinstance(optimizer, tt_dist.OptimizerInBackward):
        optimizer.set_lr(scheduler.get_last_lr()[0])


# ---------------------------------------------------------------------------------------------
# The model calls every objective makes


def hidden_states(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A decoder's last hidden states ``[b, s, dim]`` for a padded or packed batch (packed
    rows attend within their documents only: a block-causal mask from ``document_ids``)."""
    mask = batch.get("mask")
    if mask is None and "document_ids" in batch:
        mask = block_causal_mask(batch["document_ids"])
    images = {key: batch[key] for key in IMAGE_KEYS if key in batch}
    return model(
        batch["tokens"], mask=mask, input_pos=batch.get("input_pos"), return_hidden=True, **images
    )


def offloaded_activations(run: Run) -> Any:
    """Around the trained model's forward: its saved activations go to CPU memory when
    ``enable_activation_offloading`` (CUDA; a no-op otherwise)."""
    return tt_dist.activation_offloading(run.cfg.enable_activation_offloading, run.dist.device)


def forward_hidden(run: Run, batch: Batch) -> torch.Tensor:
    """The trained model's hidden states, its activations offloaded when configured."""
    with offloaded_activations(run):
        return hidden_states(run.model, batch)


def sft_loss(run: Run, batch: Batch) -> BatchLoss:
    """Cross-entropy summed over the batch's labelled tokens."""
    hidden = forward_hidden(run, batch)
    return BatchLoss(
        run.loss_fn(hidden, run.model.logits_from_hidden, shift_labels(batch["labels"]))
    )


SFT = Objective(batch_loss=sft_loss)


# ---------------------------------------------------------------------------------------------
# One optimizer step


def forward_backward(run: Run, micro_batches: list[Batch]) -> StepResult:
    """The objective's loss over every micro-batch of a step, backpropagated.

    Each micro-batch's summed loss is divided by the units of ALL micro-batches of the step on
    ALL ranks, so the gradient is the mean over units however the batch is split (FSDP
    averages gradients over ranks, hence the ``world_size`` factor).
    """
    world = run.dist.world_size
    units = tt_dist.sum_over_ranks(sum(run.objective.units(b) for b in micro_batches))
    if units == 0:
        raise ValueError(
            f"step {run.progress.step + 1}: nothing to train on in the batch (all labels "
            "masked); check the dataset's masking / train_on_input settings"
        )
    sums = _Sums()
    for batch in micro_batches:
        out = run.objective.batch_loss(run, batch)
        loss = out.loss * (world / units)
        router = take_balance(run.moe_blocks)
        if router is not None:  # a mixture of experts: its router losses join in
            coefs = run.cfg.moe_loss
            extra = coefs.aux_loss_coef * router.aux_loss + coefs.z_loss_coef * router.z_loss
            loss = loss + extra / len(micro_batches)
            out = BatchLoss(out.loss, {**out.metrics, **router_metrics(router)})
        loss.backward()
        sums.add(out)
    means = sums.means(units)
    return StepResult(loss=means.pop("loss"), tokens=step_tokens(micro_batches), metrics=means)


def router_metrics(router: RouterLosses) -> dict[str, tuple[float, float]]:
    """``aux_loss``, ``z_loss`` and the busiest and idlest expert's load relative to a
    perfectly balanced one (``expert_load_max``/``_min``: 1.0 when balanced), means over the
    mixture-of-experts blocks."""
    relative = router.expert_load * router.expert_load.shape[-1]
    return {
        "aux_loss": (router.aux_loss.item(), 1),
        "z_loss": (router.z_loss.item(), 1),
        "expert_load_max": (relative.max(dim=-1).values.mean().item(), 1),
        "expert_load_min": (relative.min(dim=-1).values.mean().item(), 1),
    }


def optimizer_step(run: Run) -> float | None:
    """Clip, step and schedule (the gradients are already there); returns the gradient norm
    before clipping (None without clipping)."""
    cfg = run.cfg
    grad_norm = None
    if cfg.clip_grad_norm is not None:
        params = [p for p in run.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        grad_norm = tt_dist.full_value(norm)
    run.optimizer.step()  # no-op with optimizer_in_bwd: every parameter stepped in backward
    run.optimizer.zero_grad(set_to_none=True)
    if run.scheduler is not None:
        run.scheduler.step()
        _share_scheduled_lr(run.optimizer, run.scheduler)
    return grad_norm


def step_tokens(micro_batches: list[Batch]) -> int:
    """Tokens processed in the step (padding included) on all ranks, for throughput."""
    return int(tt_dist.sum_over_ranks(sum(int(b["tokens"].numel()) for b in micro_batches)))


class _Sums:
    """Adds up micro-batches' losses and metrics; means over all ranks."""

    def __init__(self) -> None:
        self.per_unit: dict[str, float] = {"loss": 0.0}
        self.own: dict[str, list[float]] = {}  # name -> [sum, count]

    def add(self, out: BatchLoss) -> None:
        self.per_unit["loss"] += out.loss.item()
        for name, value in out.metrics.items():
            if isinstance(value, tuple):
                total = self.own.setdefault(name, [0.0, 0.0])
                total[0], total[1] = total[0] + value[0], total[1] + value[1]
            else:
                self.per_unit[name] = self.per_unit.get(name, 0.0) + value

    def means(self, units: float) -> dict[str, float]:
        means = {name: tt_dist.sum_over_ranks(v) / units for name, v in self.per_unit.items()}
        for name, (total, count) in self.own.items():
            means[name] = tt_dist.sum_over_ranks(total) / max(tt_dist.sum_over_ranks(count), 1)
        return means


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(run: Run, loader: Any = None) -> dict[str, float]:
    """The objective's loss and metrics over a whole validation set, as ``val_*`` means."""
    loader = loader if loader is not None else run.val_loader
    run.model.eval()
    sums = _Sums()
    units = 0
    for batch in loader:
        batch = to_device(batch, run.dist.device)
        sums.add(run.objective.batch_loss(run, batch))
        units += run.objective.units(batch)
    run.model.train()
    means = sums.means(max(tt_dist.sum_over_ranks(units), 1))
    # A metric reported as val_loss replaces the objective's own (e.g. distillation's total,
    # a fixed mix of the cross-entropy and KL that are both reported).
    chosen = run.objective.val_loss
    result = {"val_loss": means.pop(chosen)}
    means.pop("loss", None)
    return {**result, **{f"val_{name}": value for name, value in means.items()}}


# ---------------------------------------------------------------------------------------------
# The fixed-dataset loop


def train(run: Run) -> None:
    """For each optimizer step: ``gradient_accumulation_steps`` micro-batches (moved to the
    device once), forward/backward, clip, step, log, validate and save when due; the final
    checkpoint at the end. Resumes first when ``resume_from_checkpoint`` is set."""
    cfg = run.cfg
    if cfg.resume_from_checkpoint:
        resume(run)
    ga = cfg.gradient_accumulation_steps
    window_start, window_tokens = time.perf_counter(), 0
    with stepping(run) as progress:
        for batches, steps_left in epochs(run, loader_batches_per_step=ga):
            for _ in range(steps_left):
                micro_batches = [to_device(next(batches), run.dist.device) for _ in range(ga)]
                result = forward_backward(run, micro_batches)
                grad_norm = optimizer_step(run)
                step = run.progress.step = run.progress.step + 1
                window_tokens += result.tokens
                progress.update(1)
                progress.set_postfix(loss=f"{result.loss:.4f}")
                check_finite(run, result.loss)
                run.progress.history.append(result.loss)
                if step % cfg.log_every_n_steps == 0 or step == 1:
                    elapsed = time.perf_counter() - window_start
                    log_metrics(run, result, grad_norm, window_tokens / max(elapsed, 1e-9))
                    window_start, window_tokens = time.perf_counter(), 0
                if due(step, cfg.run_val_every_n_steps) and run.val_loader is not None:
                    run.logger.log_dict(evaluate(run), step=step)
                if due(step, cfg.save_every_n_steps) and step < run.total_steps:
                    save(run)
        save(run, final=True)


def epochs(run: Run, loader_batches_per_step: int) -> Iterator[tuple[Iterator[Any], int]]:
    """For each epoch left from the run's step on: an iterator over its loader batches and
    how many steps remain in it. A resumed run starts mid-epoch at the sample where it
    stopped (the sampler skips what was seen, without loading it)."""
    cfg = run.cfg
    start_epoch, start_in_epoch = divmod(run.progress.step, run.steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        first = start_in_epoch if epoch == start_epoch else 0
        run.sampler.set_epoch(epoch, start_index=first * loader_batches_per_step * cfg.batch_size)
        yield iter(run.loader), run.steps_per_epoch - first


@contextmanager
def stepping(run: Run) -> Iterator[Any]:
    """Around a run's loop: its progress bar; Ctrl-C / SIGTERM become ``Interrupted`` saying
    where the run stopped (also when what surfaced is an error the signal caused, such as a
    collective whose peer stopped first); the logger closed at the end."""
    record = metric_logging.ValidationRecord()
    run.logger = metric_logging.MultiLogger([run.logger, record])
    started, first_step = time.perf_counter(), run.progress.step
    bar = tqdm(
        total=run.total_steps,
        initial=run.progress.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=run.dist.rank != 0,
    )
    try:
        with profiling.profiled(
            run.cfg, run.dist.device, run.dist.rank, run.dist.world_size,
            step=lambda: run.progress.step,
        ) as profiler:  # fmt: skip
            yield StepProgress(bar, profiler)
        bar.close()
        if run.dist.rank == 0:
            log_summary(run, time.perf_counter() - started, first_step, record)
    except KeyboardInterrupt as interrupt:
        raise interrupted(run, interrupt) from None
    except BaseException:
        signal_first = interrupts.received()
        if signal_first is not None:
            raise interrupted(run, signal_first) from None
        raise
    finally:
        bar.close()
        run.logger.close()


def log_summary(
    run: Run, seconds: float, first_step: int, record: metric_logging.ValidationRecord
) -> None:
    """What a finished run did and where its result is, in a few lines."""
    steps = run.progress.step - first_step
    history = run.progress.history
    lines = [f"Finished: {steps} steps in {seconds:.1f} s" + (
        f" ({steps / seconds:.2f} steps/s); training loss {history[0]:.4g} -> "
        f"{sum(history[-10:]) / len(history[-10:]):.4g} (mean of the last {len(history[-10:])})"
        if history and seconds > 0 else ""
    )]  # fmt: skip
    if record.last:
        lines.append("Validation: " + "; ".join(record.lines()))
    last = checkpointing.latest_step_dir(checkpointing.checkpoint_root(run.cfg))
    if last is not None:
        lines.append(f"Last checkpoint: {last}")
        if (last / "config.json").is_file():
            lines.append(
                f"Try it: tt run generate --config tiny/generate checkpoint_dir={last} "
                "prompt='...'   (or evaluate it: tt run evaluate --config YOUR_EVAL.yaml "
                f"checkpoint_dir={last})"
            )
    for line in lines:
        log.info(line)


@dataclass
class StepProgress:
    """What a loop advances once per finished step: the progress bar and, when
    ``profiler.enabled``, the profiler's schedule."""

    bar: Any
    profiler: torch.profiler.profile | None

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)
        if self.profiler is not None:
            for _ in range(steps):
                self.profiler.step()

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)


def interrupted(run: Run, interrupt: KeyboardInterrupt) -> interrupts.Interrupted:
    """Where a Ctrl-C / SIGTERM stopped the run and how to go on from there."""
    root = checkpointing.checkpoint_root(run.cfg)
    how = str(interrupt) if isinstance(interrupt, interrupts.Interrupted) else "interrupted"
    resume_hint = (
        "; resume with resume_from_checkpoint=true" if checkpointing.latest_step_dir(root) else ""
    )
    return interrupts.Interrupted(
        f"{how} at step {run.progress.step}; {checkpointing.last_checkpoint_note(root)}"
        f"{resume_hint}",
        interrupts.exit_code(interrupt),
    )


def check_finite(run: Run, loss: float) -> None:
    """Stop at a NaN/inf loss, naming the step and the last good checkpoint."""
    import math

    if not math.isfinite(loss):
        root = checkpointing.checkpoint_root(run.cfg)
        raise FloatingPointError(
            f"loss became {loss} at step {run.progress.step}; stopping "
            f"({checkpointing.last_checkpoint_note(root)}). Lower the learning rate, enable "
            "clip_grad_norm, or check the data around this step."
        )


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
    run.logger.log_dict(metrics, step=run.progress.step)


def due(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


# ---------------------------------------------------------------------------------------------
# Checkpoints of the run (see tt_recipes.checkpointing for what a checkpoint holds)


def trained_models(run: Run) -> dict[str, tt_dist.TrainedModel]:
    return {"": tt_dist.TrainedModel(run.model, run.optimizer, run.plan.trainable_only)}


def stateful_parts(run: Run) -> dict[str, checkpointing.Stateful]:
    parts: dict[str, Any] = {"progress": run.progress, "rng": checkpointing.RNGState()}
    if run.scheduler is not None:
        parts["scheduler"] = run.scheduler
    return {**parts, **run.extra_state}


def save(run: Run, final: bool = False) -> None:
    """Write ``step_N`` (all ranks call this); the final one holds the training state unless
    ``save_final_training_state`` is false."""
    checkpointing.save_checkpoint(
        checkpointing.checkpoint_root(run.cfg),
        run.progress.step,
        models=trained_models(run),
        state=stateful_parts(run),
        exports={"": run.plan.exporter(run.model, run.cfg, run.tokenizer)},
        keep_last_n=run.cfg.keep_last_n_checkpoints,
        training_state=not final or run.cfg.save_final_training_state,
    )


def resume(run: Run) -> None:
    """Restore weights, optimizer, schedule, RNG, data position and step from the latest
    checkpoint (written by any number of processes: the shards are redistributed)."""
    latest = checkpointing.resume_checkpoint(
        checkpointing.checkpoint_root(run.cfg),
        models=trained_models(run),
        state=stateful_parts(run),
    )
    log.info(f"Resumed from {latest} at step {run.progress.step}")
    mark = getattr(run.logger, "resumed", None)  # a user's own logger may not have it
    if mark is not None:
        mark(run.progress.step, str(latest))
