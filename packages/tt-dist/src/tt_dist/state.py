"""Loading full weights into a sharded model, gathering them back, and resumable checkpoints.

Training state goes through torch.distributed.checkpoint (DCP): every rank writes its own
shards plus metadata describing the global tensors, so a checkpoint written by N processes
loads into M processes (M != N is fine; 1 means no process group at all).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor, Replicate, Shard

from tt_dist.process_group import barrier, is_distributed, is_rank_zero

EXTRA_FILE = "extra.pt"
_OPTIM_PREFIX = "optim."
_PLAIN_TYPES = (int, float, str, bool, type(None), torch.Tensor)


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys that alias an earlier key's parameter (tied embeddings) -> that key."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _check_keys(model: nn.Module, full_sd: Mapping[str, Any], strict: bool) -> list[str]:
    """Keys to load; tied aliases missing from ``full_sd`` are skipped (they share storage)."""
    aliases = _tied_aliases(model)
    expected = [k for k in model.state_dict() if not (k in aliases and k not in full_sd)]
    missing = [k for k in expected if k not in full_sd]
    unexpected = [k for k in full_sd if k not in set(expected) and k not in aliases]
    if strict and (missing or unexpected):
        raise KeyError(
            f"full state dict does not match {type(model).__name__}: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} (pass strict=False to load a subset)"
        )
    return [k for k in expected if k in full_sd]


def _is_nf4(tensor: torch.Tensor) -> bool:
    """A torchao ``NF4Tensor`` (QLoRA base weight), recognised without importing torchao."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return type(local).__name__ == "NF4Tensor"


def _nf4_parameter(key: str, target: torch.Tensor, full: torch.Tensor, device) -> nn.Parameter:
    """This rank's NF4 shard of ``full``, quantized with the target's block sizes.

    NF4's second-level scales share one mean over the whole tensor, so a shard must be cut
    from the quantized whole tensor to equal what one process holds: each rank quantizes one
    weight at a time on ``device`` (a transient full copy of that weight) and keeps a
    compact copy of its rows. The result replaces the parameter (it cannot be copied in:
    NF4's packed codes are not elementwise).
    """
    local = target.to_local() if isinstance(target, DTensor) else target
    if _is_nf4(full):
        quantized = full.to(device)
    else:
        source = full.to(device=device, dtype=local.dtype)
        quantized = type(local).from_tensor(source, local.block_size, local.scaler_block_size)
    if not isinstance(target, DTensor):
        return nn.Parameter(quantized, requires_grad=target.requires_grad)
    _, rows = _local_target_and_source(key, target, quantized)
    # The chunk views the whole tensor's storage; copy it into storage of its own. Not with
    # clone(): torchao's NF4 clone re-quantizes the rows with their own scale mean.
    own = rows.new_zeros(rows.shape)
    own.copy_(rows)
    shard = DTensor.from_local(
        own,
        target.device_mesh,
        target.placements,
        run_check=False,
        shape=target.shape,
        stride=target.stride(),
    )
    return nn.Parameter(shard, requires_grad=target.requires_grad)


def _local_target_and_source(
    key: str, target: torch.Tensor, full: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's storage for ``key`` and the matching slice of the full tensor."""
    if tuple(full.shape) != tuple(target.shape):
        raise ValueError(
            f"{key!r}: full state dict has shape {tuple(full.shape)}, model expects "
            f"{tuple(target.shape)}"
        )
    if not isinstance(target, DTensor):
        return target, full
    placements = tuple(target.placements)
    if placements == (Replicate(),):
        return target.to_local(), full
    if placements != (Shard(0),):
        raise NotImplementedError(
            f"{key!r} has placements {placements}; only Shard(0) and Replicate() on a 1-D mesh "
            "(what shard_model produces) are supported"
        )
    # FSDP2 shards dim 0 the way torch.chunk does; trailing ranks may hold an empty shard.
    index = target.device_mesh.get_local_rank()
    chunks = full.chunk(target.device_mesh.size(), dim=0)
    part = chunks[index] if index < len(chunks) else full[:0]
    return target.to_local(), part


def _materialize(model: nn.Module, device: torch.device, init_buffers) -> None:
    on_meta = any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    if not on_meta:
        return
    persistent = set(model.state_dict())
    volatile = [n for n, _ in model.named_buffers() if n not in persistent]
    if volatile and init_buffers is None:
        raise ValueError(
            f"model is on the meta device and has non-persistent buffers {volatile[:5]} that no "
            "state dict holds; pass init_buffers=fn (fn(model) recomputes them, e.g. RoPE caches)"
        )
    model.to_empty(device=device)
    if init_buffers is not None:
        with torch.no_grad():
            init_buffers(model)


@torch.no_grad()
def load_full_state_dict(
    model: nn.Module,
    full_sd: Mapping[str, torch.Tensor],
    device: torch.device | str,
    *,
    strict: bool = True,
    init_buffers: Callable[[nn.Module], None] | None = None,
) -> None:
    """Copy a full (unsharded) state dict into a model that may be sharded and on meta.

    Each rank copies only the slice of each tensor that it owns, so with a memory-mapped
    ``full_sd`` (``safetensors.torch.load_file`` / ``torch.load`` with ``mmap=True``) no rank ever
    holds a full copy in RAM; values are cast to the model's dtype on the way. A meta-device
    model is first allocated on ``device`` (only its shards); ``init_buffers(model)`` then
    recomputes non-persistent buffers. Tied weights absent from ``full_sd`` are skipped.

    Parameters that are torchao NF4 tensors (QLoRA bases, on meta or not) receive the
    full-precision value quantized the way one process would quantize it, then cut to this
    rank's rows; the model's shards then equal a model quantized whole and sharded after.
    """
    keys = _check_keys(model, full_sd, strict)
    device = torch.device(device)
    _materialize(model, device, init_buffers)
    targets = model.state_dict()
    quantized = {}
    for key in keys:
        if _is_nf4(targets[key]):
            quantized[key] = _nf4_parameter(key, targets[key], full_sd[key], device)
            continue
        if _is_nf4(full_sd[key]):
            raise TypeError(
                f"{key!r} is NF4 in the full state dict but {type(targets[key]).__name__} in "
                "the model: dequantize it first, or quantize the model's layer (QLoRA) to load it"
            )
        local, part = _local_target_and_source(key, targets[key], full_sd[key])
        local.copy_(part)
    if quantized:
        # assign=True is how FSDP2 expects a sharded parameter to be replaced: its post-load
        # hook re-points its sharded storage at the new tensor.
        model.load_state_dict(quantized, strict=False, assign=True)


def gather_full_state_dict(
    model: nn.Module, *, trainable_only: bool = False
) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU state dict on rank 0 (``{}`` on other ranks), e.g. for HF export.

    Every rank must call it (it all-gathers shard by shard). ``trainable_only`` keeps only
    parameters with ``requires_grad`` (LoRA adapters).
    """
    if not is_distributed():
        keep = _trainable_names(model) if trainable_only else set(model.state_dict())
        return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keep}
    # Sharded values (DCP resolves the state-dict names), then gathered here one at a time
    # rather than by full_state_dict=True: torch gathers a tensor subclass (a QLoRA base's NF4
    # weight) into inner tensors it never waits for, and an all-gather left in flight while
    # its buffers are freed corrupted the heap ("malloc(): unaligned tcache chunk detected").
    options = StateDictOptions(ignore_frozen_params=trainable_only)
    sharded = get_model_state_dict(model, options=options)
    full = {}
    for name, value in sharded.items():
        if isinstance(value, DTensor):
            value = _waited(value.full_tensor())
        if is_rank_zero():
            full[name] = value.detach().cpu()
    return full


def _waited(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with every collective that produced it (or its inner tensors) finished."""
    if isinstance(tensor, AsyncCollectiveTensor):
        return tensor.wait()
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        for attr in flatten()[0]:
            setattr(tensor, attr, _waited(getattr(tensor, attr)))
    return tensor


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_list(optimizer) -> list[torch.optim.Optimizer]:
    """Accept one optimizer, several, or anything with ``.optimizers`` (optimizer-in-backward)."""
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    items = list(getattr(optimizer, "optimizers", optimizer))
    bad = [type(o).__name__ for o in items if not isinstance(o, torch.optim.Optimizer)]
    if bad:
        raise TypeError(f"optimizer must be torch.optim.Optimizer(s), got {bad}")
    return items


def _check_extra(value: Any, where: str = "extra") -> None:
    """``extra`` is read back with ``weights_only=True``, which only knows plain types."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_extra(k, f"{where} key")
            _check_extra(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_extra(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; extra state may hold only int, float, str, "
            "bool, None, tensors, and dicts/lists/tuples of them"
        )


def _state_options(trainable_only: bool) -> StateDictOptions:
    # Frozen weights (a LoRA run's base model) come back from the original checkpoint, so a
    # trainable_only checkpoint need not repeat them; loading then leaves them untouched.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


@dataclass(frozen=True)
class TrainedModel:
    """One model of a training state: its optimizer(s) (None for a frozen model) and whether
    only its trainable parameters are saved (adapters over a base that is re-loaded)."""

    model: nn.Module
    optimizer: Any = None
    trainable_only: bool = False


def _as_models(model: Any, optimizer: Any, trainable_only: bool) -> dict[str, TrainedModel]:
    if isinstance(model, Mapping):
        if optimizer is not None or trainable_only:
            raise TypeError(
                "pass optimizer and trainable_only inside each TrainedModel when saving several "
                "models"
            )
        bad = [name for name, part in model.items() if not isinstance(part, TrainedModel)]
        if bad or not model:
            raise TypeError(f"expected a non-empty mapping of name -> TrainedModel; bad: {bad}")
        return dict(model)
    return {"": TrainedModel(model, optimizer, trainable_only)}


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def _training_state(models: Mapping[str, TrainedModel]) -> dict[str, Any]:
    """DCP state dict of every model: ``model``/``optim`` for a lone unnamed one,
    ``NAME.model``/``NAME.optim`` for named ones."""
    state: dict[str, Any] = {}
    for name, part in models.items():
        options = _state_options(part.trainable_only)
        optimizers = _optimizer_list(part.optimizer)
        if optimizers:
            model_sd, optim_sd = get_state_dict(part.model, optimizers, options=options)
            state[f"{_prefix(name)}optim"] = optim_sd
        else:
            model_sd = get_model_state_dict(part.model, options=options)
        state[f"{_prefix(name)}model"] = model_sd
    return state


def _set_training_state(models: Mapping[str, TrainedModel], state: Mapping[str, Any]) -> None:
    for name, part in models.items():
        options = _state_options(part.trainable_only)
        optimizers = _optimizer_list(part.optimizer)
        model_sd = state[f"{_prefix(name)}model"]
        if optimizers:
            set_state_dict(
                part.model,
                optimizers,
                model_state_dict=model_sd,
                optim_state_dict=state[f"{_prefix(name)}optim"],
                options=options,
            )
        else:
            set_model_state_dict(part.model, model_sd, options=options)


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap ``src`` into ``dst``; the old checkpoint is removed only after the rename."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def save_distributed_state(
    checkpoint_dir: str | os.PathLike,
    model: nn.Module | Mapping[str, TrainedModel],
    optimizer=None,
    extra: Mapping[str, Any] | None = None,
    *,
    trainable_only: bool = False,
) -> None:
    """Write model + optimizer state (sharded, via DCP) and ``extra`` (step, epoch, ...).

    All ranks call it. ``model`` is one model (with ``optimizer``: an Optimizer, a list of
    them, or an ``OptimizerInBackward``; ``trainable_only`` leaves out parameters with
    ``requires_grad=False``) or a mapping of names to :class:`TrainedModel` (several trained
    models, e.g. a policy and a value model). Files go to ``<dir>.tmp`` and are renamed into
    place once every rank has finished, so an interrupted save never replaces a good
    checkpoint; a failed save (a full disk, Ctrl-C) removes ``<dir>.tmp`` and re-raises.
    """
    final = Path(checkpoint_dir)
    models = _as_models(model, optimizer, trainable_only)
    _check_extra(dict(extra or {}))
    tmp = final.with_name(final.name + ".tmp")
    if is_rank_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    try:
        state = _training_state(models)
        with _single_process_is_intended():
            dcp.save(state, checkpoint_id=str(tmp))
        if is_rank_zero():
            torch.save(dict(extra or {}), tmp / EXTRA_FILE)
            _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()


@contextlib.contextmanager
def _single_process_is_intended():
    # Without a process group DCP warns that it "assumes" one process: here that is the plan.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint without running code from it. DCP pickles its ``.metadata`` and the
# non-tensor values of a state dict (an optimizer's lr, betas...), and unpickles both with
# plain pickle: a checkpoint someone else wrote could run anything. Here the metadata may name
# only the classes DCP itself writes there, and the values only what ``weights_only`` allows.

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    *(
        (_DCP_METADATA, name)
        for name in (
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "ChunkStorageMetadata",
            "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
        )
    ),
}  # fmt: skip


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file names something other than the data DCP writes."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source} names {module}.{name}, which a torch.distributed.checkpoint written "
            "by tt never holds; refusing to load it (unpickling it could run code). Only resume "
            "from checkpoints you wrote yourself"
        )


class SafeCheckpointReader(dcp.FileSystemReader):
    """``FileSystemReader`` whose metadata may only hold DCP's own classes."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _PlainValuesLoadPlanner(DefaultLoadPlanner):
    """Non-tensor values are read with ``weights_only=True`` (DCP uses ``False``)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            plain = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [line for line in str(e).splitlines() if "GLOBAL" in line] or [str(e)]
            raise UnsafeCheckpointError(
                f"the checkpoint value {read_item.dest_index.fqn!r} is not plain data "
                f"({lines[0].strip()}); refusing to load it. Only resume from checkpoints you "
                "wrote yourself"
            ) from None
        buffer = io.BytesIO()
        torch.save(plain, buffer)
        buffer.seek(0)
        super().load_bytes(read_item, buffer)


def _saved_keys(path: Path) -> set[str]:
    return set(SafeCheckpointReader(str(path)).read_metadata().state_dict_metadata)


def load_distributed_state(
    checkpoint_dir: str | os.PathLike,
    model: nn.Module | Mapping[str, TrainedModel],
    optimizer=None,
    *,
    trainable_only: bool = False,
) -> dict[str, Any]:
    """Load what ``save_distributed_state`` wrote into ``model`` (and ``optimizer``), or into
    each named :class:`TrainedModel` of a mapping.

    The models may be sharded over any number of processes, or not at all; DCP reshards.
    Returns the ``extra`` dict that was saved. Nothing in the files is executed: DCP's pickled
    metadata may only name DCP's own classes and every other value is read with
    ``weights_only=True`` (``UnsafeCheckpointError`` otherwise).
    """
    path = Path(checkpoint_dir)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"no distributed checkpoint at {str(path)!r} (expected {path / '.metadata'}, "
            "written by tt_dist.save_distributed_state)"
        )
    models = _as_models(model, optimizer, trainable_only)
    saved = _saved_keys(path)
    for name, part in models.items():
        of = f" of model {name!r}" if name else ""
        if not any(k.startswith(f"{_prefix(name)}model.") for k in saved):
            raise ValueError(f"checkpoint {str(path)!r} holds no weights{of}")
        if _optimizer_list(part.optimizer) and not any(
            k.startswith(f"{_prefix(name)}{_OPTIM_PREFIX}") for k in saved
        ):
            raise ValueError(
                f"checkpoint {str(path)!r} holds no optimizer state{of} but an optimizer was "
                "given; load with optimizer=None to restore the model only"
            )
    state = _training_state(models)
    try:
        with _single_process_is_intended():
            dcp.load(
                state,
                storage_reader=SafeCheckpointReader(str(path)),
                planner=_PlainValuesLoadPlanner(),
            )
    except CheckpointException as e:  # DCP collects each rank's failure; name the refusal
        for failure in e.failures.values():
            cause = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(cause, UnsafeCheckpointError):
                raise cause from None
        raise
    _set_training_state(models, state)
    return torch.load(path / EXTRA_FILE, weights_only=True, map_location="cpu")
