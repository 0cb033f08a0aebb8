"""FSDP2 sharding: one ``fully_shard`` unit per transformer block, the root last."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from tt_dist.process_group import is_distributed

BlockPredicate = Callable[[str, nn.Module], bool]


def block_predicate(
    block_classes: Sequence[type[nn.Module]] | None = None,
    is_block: BlockPredicate | None = None,
) -> BlockPredicate:
    """Turn a class list or a ``(name, module) -> bool`` predicate into one predicate.

    Exactly one of the two must be given; tt_dist knows no model classes itself.
    """
    if (block_classes is None) == (is_block is None):
        raise ValueError(
            "give exactly one of block_classes (e.g. [TransformerSelfAttentionLayer]) or "
            f"is_block (a (name, module) -> bool predicate); got block_classes={block_classes!r}"
            f", is_block={is_block!r}"
        )
    if is_block is not None:
        return is_block
    classes = tuple(block_classes)
    if not classes or not all(isinstance(c, type) for c in classes):
        raise ValueError(
            f"block_classes must be a non-empty list of classes, got {block_classes!r}"
        )
    return lambda _name, module: isinstance(module, classes)


def find_blocks(model: nn.Module, is_block: BlockPredicate) -> list[tuple[str, nn.Module]]:
    """The modules the predicate selects, outermost only (a block inside a block is skipped)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if module is model or any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        if is_block(name, module):
            found.append((name, module))
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"the block predicate matched no submodule of {type(model).__name__}; "
            f"module classes present: {kinds}"
        )
    return found


def _named_units(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Modules named in ``custom_sharded_layers``: a full dotted name or its last component."""
    modules = dict(model.named_modules())
    units = []
    for wanted in names:
        matches = [m for n, m in modules.items() if n == wanted or n.endswith(f".{wanted}")]
        if not matches:
            top = [n for n, _ in model.named_children()]
            raise ValueError(
                f"custom_sharded_layers entry {wanted!r} names no module of "
                f"{type(model).__name__}; top-level modules: {top}"
            )
        units.extend(matches)
    return units


def _mixed_precision_policy(enabled: bool | None, device_type: str) -> MixedPrecisionPolicy:
    if enabled is None:
        enabled = device_type == "cuda"
    if not enabled:
        return MixedPrecisionPolicy()
    if device_type != "cuda":
        raise ValueError(
            f"mixed_precision=True needs a CUDA device (bf16 all-gather, fp32 reduce); the "
            f"process group runs on {device_type!r}. Use mixed_precision=None or False on CPU"
        )
    # bf16 compute and all-gather halve traffic; reducing gradients in fp32 keeps their sum exact
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _offload_policy(cpu_offload: bool, device_type: str) -> CPUOffloadPolicy | None:
    if not cpu_offload:
        return None
    if device_type == "cpu":
        raise ValueError(
            "fsdp_cpu_offload=True needs an accelerator: it moves parameters, gradients and "
            "optimizer state from GPU to CPU memory, and this run is already on CPU. "
            "Set fsdp_cpu_offload=False"
        )
    return CPUOffloadPolicy()


def _default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_mesh(device_type: str) -> DeviceMesh:
    if not is_distributed():
        raise RuntimeError(
            "shard_model needs a process group: call tt_dist.init_distributed() under torchrun "
            "(`tt run --nproc_per_node N ...`); a single-process run should not shard"
        )
    return init_device_mesh(device_type, (dist.get_world_size(),))


def shard_model(
    model: nn.Module,
    *,
    block_classes: Sequence[type[nn.Module]] | None = None,
    is_block: BlockPredicate | None = None,
    reshard_after_forward: bool = True,
    mixed_precision: bool | None = None,
    cpu_offload: bool = False,
    shard_embeddings: bool = False,
    custom_sharded_layers: Sequence[str] | None = None,
    mesh: DeviceMesh | None = None,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 and return it.

    Each block (chosen by ``block_classes`` or ``is_block``) becomes its own ``fully_shard``
    unit so only one block's full parameters exist at a time; ``shard_embeddings`` adds every
    ``nn.Embedding``, ``custom_sharded_layers`` adds modules by name (e.g. ``["output"]``);
    the root is sharded last and holds what is left. ``mixed_precision=None`` means bf16
    params with fp32 gradient reduction on CUDA and full fp32 on CPU. ``cpu_offload`` keeps
    sharded params, grads and optimizer state in CPU memory (CUDA only). Works on a model
    on the meta device; load weights afterwards with ``load_full_state_dict``.

    Example::

        shard_model(model, block_classes=[DecoderLayer], custom_sharded_layers=["output"])
    """
    # validate every option before touching the model
    device_type = mesh.device_type if mesh is not None else _default_device_type()
    mp_policy = _mixed_precision_policy(mixed_precision, device_type)
    offload = _offload_policy(cpu_offload, device_type)
    units = [m for _, m in find_blocks(model, block_predicate(block_classes, is_block))]
    if shard_embeddings:
        units += [m for m in model.modules() if isinstance(m, nn.Embedding)]
    units += _named_units(model, custom_sharded_layers or [])
    mesh = mesh if mesh is not None else _default_mesh(device_type)
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward, "mp_policy": mp_policy}
    if offload is not None:
        options["offload_policy"] = offload
    seen: set[int] = set()
    for unit in units:
        if id(unit) not in seen and unit is not model:
            seen.add(id(unit))
            fully_shard(unit, **options)
    fully_shard(model, **options)
    return model


@contextmanager
def unsharded(model: nn.Module, reshard_after_forward: bool = True) -> Iterator[None]:
    """Gather every FSDP2 unit of ``model`` once for many forward passes (token-by-token
    generation), instead of once per pass; reshard on exit and restore
    ``reshard_after_forward``. A model that is not sharded is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)
            unit.reshard()
