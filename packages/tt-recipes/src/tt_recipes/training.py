"""Pieces every training recipe needs, as plain functions: device and dtype, building the
model from config or checkpoint (sharded or not, frozen copies for reference and teaching),
the dataloader with a resumable position, sharding, compile, memory stats. Checkpoints are
``tt_recipes.checkpointing``; the step loop is ``tt_recipes.trainer``.

Recipes call these; they hold no state of their own.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tt_models import TransformerScorer

from tt_recipes.config import instantiate
from tt_recipes.pretrained import (
    SEQUENCE_CLASSIFICATION,
    from_pretrained,
    resolve_dtype,
    scorer_from_pretrained,
)
from tt_recipes.sampling import ResumableSampler

log = logging.getLogger("tt")


def get_dtype(name: str | None, device: torch.device) -> torch.dtype:
    dtype = resolve_dtype(name or "fp32")
    if dtype == torch.float16:
        raise ValueError("dtype: fp16 training is not supported (it needs loss scaling); use bf16")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype: bf16 is not supported on {torch.cuda.get_device_name(device)}")
    return dtype


# ---------------------------------------------------------------------------------------------
# Model and weights


def resolve_checkpoint_dir(path: str | Path, announce: bool = True) -> Path:
    """A model directory, or a tt run's output_dir: then its latest complete ``step_N``
    (said in the log unless ``announce`` is False)."""
    from tt_recipes.checkpointing import latest_step_dir

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = latest_step_dir(path)
    if latest is not None and (latest / "config.json").is_file():
        if announce:
            log.info(f"Using the latest checkpoint of {path}: {latest.name}")
        return latest
    contents = sorted(p.name for p in path.iterdir())[:20] if path.is_dir() else None
    raise FileNotFoundError(
        f"checkpointer.checkpoint_dir={str(path)!r} holds no config.json and no step_N "
        f"checkpoint directory; it contains: {contents if contents is not None else 'nothing (it does not exist)'}. "
        "Point it at a Hugging Face model directory (`tt download` fetches one) or at the "
        "output_dir of an earlier tt run."
    )


def build_model(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """From ``checkpointer.checkpoint_dir`` (architecture from its config.json, weights loaded;
    a reward model's checkpoint gives a ``TransformerScorer``) or, with no checkpoint, from the
    ``model`` component with random weights."""
    checkpoint_dir = cfg.checkpointer.get("checkpoint_dir")
    if checkpoint_dir:
        source = resolve_checkpoint_dir(checkpoint_dir)
        log.info(f"Loading weights from {source}")
        if is_scorer_checkpoint(source):
            return scorer_from_pretrained(source, dtype=dtype, device=device).train()
        files = cfg.checkpointer.get("checkpoint_files")
        model = from_pretrained(
            source, dtype=dtype, device=device, files=list(files) if files else None
        )
        return model.train()
    if cfg.get("model") is None:
        raise ValueError(
            "set either checkpointer.checkpoint_dir (a model to fine-tune) or model "
            "(a _component_ to build with random weights)"
        )
    weights = (
        "weights from the run being resumed"
        if cfg.get("resume_from_checkpoint")
        else ("random weights")
    )
    log.info(f"No checkpoint given: building {cfg.model._component_} with {weights}")
    with torch.device(device):
        model = instantiate(cfg.model, dtype=dtype)
    return model.train()


def load_sharded_model(
    cfg: DictConfig, device: torch.device, dtype: torch.dtype, prepare_model: Any = None
) -> torch.nn.Module:
    """Multi-process load from a checkpoint without a full copy of the model per rank: build on
    the meta device (+ ``prepare_model``, e.g. adapters), shard, then each rank copies in only
    its slices of the weights. Adapters are then initialised exactly as in one process."""
    import tt_dist
    from tt_ckpt import load_hf_checkpoint, read_hf_config
    from tt_models import build_model as build_decoder
    from tt_models import from_hf_config

    source = resolve_checkpoint_dir(cfg.checkpointer.checkpoint_dir)
    log.info(f"Loading weights from {source}, each process only its shards")
    config = read_hf_config(source)
    scorer = is_scorer_checkpoint(source)
    model = build_decoder(
        from_hf_config({**config, "tie_word_embeddings": True} if scorer else config),
        device="meta",
        dtype=dtype,
    )
    if scorer:
        with torch.device("meta"):
            model = TransformerScorer(model)
    if prepare_model is not None:
        model = prepare_model(model, cfg)
    if cfg.enable_activation_checkpointing:
        enable_activation_checkpointing(model)
    shard(model, cfg)
    files = cfg.checkpointer.get("checkpoint_files")
    # No dtype here: safetensors files are memory-mapped, and casting would read every tensor
    # whole on every rank. load_full_state_dict casts each rank's slice as it copies it.
    _, state_dict = load_hf_checkpoint(source, files=list(files) if files else None)
    if isinstance(model, TransformerScorer):  # its decoder's weights, and its head if saved
        state_dict = {
            k if k == "score.weight" else f"decoder.{k}": v
            for k, v in state_dict.items()
            if k != "output.weight"
        }
    strict = prepare_model is None
    tt_dist.load_full_state_dict(model, state_dict, device, strict=strict)
    if isinstance(model, TransformerScorer) and "score.weight" not in state_dict:
        from tt_recipes.scoring import init_score_head

        init_score_head(model, cfg.seed)
    if prepare_model is not None:
        init_sharded_adapters(model, cfg.seed)
    return model.train()


def is_scorer_checkpoint(directory: str | Path) -> bool:
    """Whether a HF directory holds a reward/value model (``*ForSequenceClassification``)."""
    from tt_ckpt import read_hf_config

    architectures = read_hf_config(directory).get("architectures") or []
    return any(a.endswith(SEQUENCE_CLASSIFICATION) for a in architectures)


def frozen_model(cfg: DictConfig, dist: Any, checkpoint_dir: str | Path | None = None):
    """A second model for reference or teaching: loaded from ``checkpoint_dir`` (default: the
    run's own ``checkpointer.checkpoint_dir``), frozen, in eval mode, and sharded like the
    trained model when there are several processes (each rank loads only its shards)."""
    from omegaconf import OmegaConf

    if checkpoint_dir is not None:
        overrides = {"checkpoint_dir": str(checkpoint_dir), "checkpoint_files": None}
        cfg = OmegaConf.merge(cfg, {"checkpointer": overrides})
    dtype = get_dtype(cfg.dtype, dist.device)
    if dist.is_distributed:
        model = load_sharded_model(cfg, dist.device, dtype)
    else:
        model = build_model(cfg, dist.device, dtype)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def init_sharded_adapters(model: torch.nn.Module, seed: int) -> None:
    """Give sharded adapters the values ``apply_lora`` gives them in one process.

    Re-seeding and constructing each adapter layer on the CPU in module order repeats the
    single-process random draws, so every rank (and a 1-process run) starts identical. DoRA's
    magnitude is the row norm of the base weight; FSDP shards both by rows, so each rank
    computes its own rows.
    """
    from torch.distributed.tensor import distribute_tensor
    from tt_peft import DoRALinear, adapter_layers

    torch.manual_seed(seed)
    for layer in adapter_layers(model).values():
        fresh = type(layer)(
            layer.in_features, layer.out_features, layer.rank, layer.alpha,
            use_rslora=layer.use_rslora, dtype=layer.lora_a.weight.dtype,
        )  # fmt: skip
        for param, value in ((layer.lora_a.weight, fresh.lora_a.weight),
                             (layer.lora_b.weight, fresh.lora_b.weight)):  # fmt: skip
            shard = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
            param.to_local().copy_(shard.to_local())
        if isinstance(layer, DoRALinear):
            rows = layer.weight.to_local().to(layer.magnitude.dtype)
            layer.magnitude.to_local().copy_(torch.linalg.norm(rows, dim=1))


def token_id_config(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's special ids as config.json fields (so generation stops where trained)."""
    ids = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    return {key: value for key, value in ids.items() if value is not None}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# ---------------------------------------------------------------------------------------------
# Data


def build_dataset(dataset_cfg: Any, tokenizer: Any) -> Dataset:
    """One dataset component, or a list of them concatenated."""
    if isinstance(dataset_cfg, (list, tuple)) or type(dataset_cfg).__name__ == "ListConfig":
        parts = [instantiate(part, tokenizer) for part in dataset_cfg]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)
    return instantiate(dataset_cfg, tokenizer)


# The parts of a vision model ``freeze`` may name, and the lists it may be.
FREEZE_CHOICES = ([], ["encoder"], ["decoder"], ["encoder", "decoder"], ["decoder", "encoder"])


def fusion_prefixes(config: Any) -> tuple[str, ...]:
    """Names under which a vision model's fusion layers live: the cross-attention layers of
    its decoder and the projection of its image encoder (they join the two)."""
    layers = tuple(f"decoder.layers.{i}." for i in config.cross_attention_layers or ())
    return ("encoder.projection.", *layers)


def is_frozen(name: str, freeze: Any, fusion: tuple[str, ...]) -> bool:
    """Whether the parameter or module ``name`` of a vision model is in a part ``freeze``
    names (``encoder``, ``decoder``), fusion layers never being frozen."""
    part = name.split(".", 1)[0]
    return part in freeze and not (name + ".").startswith(fusion)


def freeze_parts(model: torch.nn.Module, cfg: Any, prepare: Any = None) -> torch.nn.Module:
    """``prepare`` (adapters, for instance), then the parts of a vision model named by
    ``freeze`` frozen."""
    if getattr(model.config, "vision", None) is None:
        raise ValueError(
            f"freeze: {list(cfg.freeze)}, but the model ({model.config.model_type}) is not a "
            "vision model (it has no image encoder); set freeze: []"
        )
    if prepare is not None:
        model = prepare(model, cfg)
    fusion = fusion_prefixes(model.config)
    for name, param in model.named_parameters():
        if is_frozen(name, cfg.freeze, fusion):
            param.requires_grad_(False)
    log.info(f"Frozen: the {' and '.join(cfg.freeze)} of the vision model (freeze)")
    return model


def image_collation(model: torch.nn.Module, tokenizer: Any, dist: Any) -> dict[str, Any]:
    """``{"images": settings}`` for ``collate_sft`` when ``model`` reads images, else ``{}``.

    Under several processes a batch without images still gets one blank image: every process
    must run the same layers (FSDP gathers each layer's weights together), so the image encoder
    and the cross-attention layers cannot be skipped on one process alone.
    """
    vision = getattr(model.config, "vision", None)
    if vision is None:
        return {}
    image_id = getattr(tokenizer, "image_id", None)
    if image_id is None:
        raise ValueError(
            f"the model reads images but the tokenizer {type(tokenizer).__name__} has no image "
            "token (Llama 3.2 Vision's <|image|>); use the model's own tokenizer"
        )
    if image_id != model.config.image_token_id:
        raise ValueError(
            f"the tokenizer's image token is id {image_id} but the model's config.json says "
            f"image_token_index={model.config.image_token_id}; use the model's own tokenizer"
        )
    settings = {"image_token_id": image_id, "max_num_tiles": vision.max_num_tiles}
    if dist.is_distributed:
        settings["tile_size"] = vision.tile_size
    return {"images": settings}


def build_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    collate_fn: Any,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> tuple[DataLoader, ResumableSampler]:
    """A single-process DataLoader over a resumable, rank-sharded sampler (batches in pinned
    memory when they go to a GPU, so the copy to it can overlap compute)."""
    sampler = ResumableSampler(
        len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=True,
        pin_memory=device is not None and device.type == "cuda",
    )
    return loader, sampler


# ---------------------------------------------------------------------------------------------
# Stats


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory, or peak resident memory of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB


# ---------------------------------------------------------------------------------------------
# Several processes


def shard(model: torch.nn.Module, cfg: Any) -> None:
    """FSDP2 per transformer block, with the run's fsdp_* settings."""
    import tt_dist
    from tt_models import BLOCK_CLASSES

    check_nf4_shardable(model, tt_dist.get_world_size())
    tt_dist.shard_model(
        model,
        block_classes=list(BLOCK_CLASSES),
        reshard_after_forward=cfg.fsdp_reshard_after_forward,
        cpu_offload=cfg.fsdp_cpu_offload,
        custom_sharded_layers=cfg.custom_sharded_layers,
    )
    # The chunked loss projects hidden states outside forward(); FSDP must gather the output
    # (or tied embedding) weight for that call too. A scorer has no such call.
    from torch.distributed.fsdp import register_fsdp_forward_method

    if hasattr(model, "logits_from_hidden"):
        register_fsdp_forward_method(model, "logits_from_hidden")


def check_nf4_shardable(model: torch.nn.Module, world_size: int) -> None:
    """FSDP2 splits an NF4 weight's second-level scales evenly across ranks (torchao's rule);
    say which layer cannot be split instead of failing inside torchao."""
    for name, module in model.named_modules():
        if getattr(module, "is_quantized", False):
            blocks = module.weight.quantization_factor.numel()
            if blocks % world_size:
                raise ValueError(
                    f"QLoRA on {world_size} processes: the NF4 weight of {name} "
                    f"{tuple(module.weight.shape)} has {blocks} scale blocks, which do not split "
                    f"evenly across {world_size} processes. Use a process count that divides "
                    f"{blocks}, leave {name.rsplit('.', 1)[-1]} out of peft.target_modules, or "
                    "run in one process."
                )


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a tt model (decoder layers, and an image encoder's layers)."""
    from tt_models import BLOCK_CLASSES

    blocks = [m for m in model.modules() if isinstance(m, BLOCK_CLASSES)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks")
    return blocks


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from tt_dist import apply_activation_checkpointing
    from tt_models import BLOCK_CLASSES

    apply_activation_checkpointing(model, lambda _name, module: isinstance(module, BLOCK_CLASSES))


def compile_blocks(model: torch.nn.Module) -> None:
    """torch.compile each block separately: one compiled graph reused by every layer."""
    for block in transformer_blocks(model):
        block.compile()
