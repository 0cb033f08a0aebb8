"""Memory features: activation checkpointing, activation offloading, optimizer-in-backward."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tt_dist.process_group import rank_zero_print
from tt_dist.sharding import BlockPredicate, find_blocks

_CHECKPOINTED = "_tt_dist_checkpointed"


def _checkpointed_forward(forward: Callable) -> Callable:
    def run(*args, **kwargs):
        # non-reentrant: works with kwargs, with FSDP2 hooks, and when inputs need no grad
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, is_block: BlockPredicate) -> int:
    """Recompute each block's activations in backward instead of storing them.

    Only the block's ``forward`` is replaced (on the instance), so parameter names and
    state-dict keys do not change and it composes with ``shard_model`` in either order.
    Returns the number of blocks wrapped; applying it twice is refused.
    """
    blocks = find_blocks(model, is_block)
    for name, block in blocks:
        if getattr(block, _CHECKPOINTED, False):
            raise RuntimeError(f"activation checkpointing is already applied to block {name!r}")
    for _, block in blocks:
        block.forward = _checkpointed_forward(block.forward)
        setattr(block, _CHECKPOINTED, True)
    return len(blocks)


class ActivationOffloader(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: tensors saved for backward move to CPU memory until backward needs them.

    Forward: each saved activation of at least ``min_bytes`` on ``device`` is copied into
    (pinned) CPU memory and its device memory is released as soon as the copy completes.
    Backward: the activation is copied back when autograd asks for it, and the one saved just
    before it (normally the next one backward asks for) starts copying back at the same time.

    On CUDA the copies run on a side stream, so they overlap with compute in both directions:
    the side stream waits for the kernel that produced a tensor before copying it, the caching
    allocator is told (``record_stream``) not to reuse the device memory before the copy has
    finished, and the compute stream waits for a copy-back before it reads it. Parameters (and views of
    them, such as the transposed weight a linear layer saves; FSDP's unsharded parameters
    are parameters too) and tensor subclasses (NF4 weights) are never copied: they are not
    activations. A retained graph (``backward(retain_graph=True)``) can be run again: the
    CPU copy lives as long as the graph does.
    """

    def __init__(self, device: torch.device | str, min_bytes: int = 1 << 20) -> None:
        self.device = torch.device(device)
        self.min_bytes = min_bytes
        self.offloaded = 0  # tensors moved to CPU so far
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._saved: weakref.WeakValueDictionary[int, _Offloaded] = weakref.WeakValueDictionary()
        super().__init__(self._pack, self._unpack)

    def _should_offload(self, tensor: torch.Tensor) -> bool:
        # Autograd often saves a view of a weight (linear saves weight.t()), so look at the base.
        base = tensor if tensor._base is None else tensor._base
        return (
            type(tensor) is torch.Tensor
            and not isinstance(base, nn.Parameter)
            and tensor.device.type == self.device.type
            and tensor.numel() * tensor.element_size() >= self.min_bytes
        )

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        if not self._cuda:
            yield
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            yield

    def _pack(self, tensor: torch.Tensor) -> Any:
        if not self._should_offload(tensor):
            return tensor
        cpu = torch.empty_like(tensor, device="cpu", pin_memory=self._cuda)
        with self._side_stream():
            cpu.copy_(tensor, non_blocking=self._cuda)
            if self._cuda:
                tensor.record_stream(self._stream)
        entry = _Offloaded(index=self.offloaded, cpu=cpu, device=tensor.device)
        self._saved[entry.index] = entry
        self.offloaded += 1
        return entry

    def _unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Offloaded):
            return packed
        tensor, packed.on_device = packed.on_device, None
        if tensor is None:
            tensor = self._copy_back(packed)
        previous = self._saved.get(packed.index - 1)
        if previous is not None and previous.on_device is None:
            previous.on_device = self._copy_back(previous)  # prefetch: overlaps this node
        if self._cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._stream)
            tensor.record_stream(compute)
        return tensor

    def _copy_back(self, entry: _Offloaded) -> torch.Tensor:
        with self._side_stream():
            if self._cuda:
                return entry.cpu.to(entry.device, non_blocking=True)
            return entry.cpu.clone()  # CPU "offloading" (tests): a copy with its own storage


@dataclasses.dataclass(eq=False)
class _Offloaded:
    """What autograd keeps for an offloaded tensor: the CPU copy (and a prefetched one)."""

    index: int
    cpu: torch.Tensor
    device: torch.device
    on_device: torch.Tensor | None = None


@contextlib.contextmanager
def activation_offloading(
    enabled: bool, device: torch.device | str | None = None
) -> Iterator[ActivationOffloader | None]:
    """Inside this context, tensors saved for backward live in CPU memory (see
    ``ActivationOffloader``).

    Wrap the forward pass (``with activation_offloading(cfg.enable_activation_offloading):
    logits = model(x)``); backward may run after the context has closed. On a CPU device the
    activations already live in CPU memory, so it does nothing and says so once.
    """
    if not enabled:
        yield None
        return
    device = torch.device(device) if device is not None else _current_device()
    if device.type != "cuda":
        _notice_once(
            f"activation offloading is a no-op on {device.type}: activations already live in CPU memory"
        )
        yield None
        return
    with ActivationOffloader(device) as offloader:
        yield offloader


def _current_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


_NOTICES: set[str] = set()


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        rank_zero_print(f"[tt_dist] {message}")


class OptimizerInBackward:
    """One optimizer per parameter, stepped as soon as that parameter's gradient is ready.

    The gradient is freed right after its step, so at most one layer's gradients (per FSDP
    unit: its reduced shard) exist at once. ``step`` and ``zero_grad`` are no-ops kept so a
    recipe's loop reads the same; ``state_dict``/``load_state_dict`` and
    ``tt_dist.save_distributed_state(..., optimizer=this)`` save every per-parameter state.
    Gradient clipping is not possible: no global gradient norm exists before the steps.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    ) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True")
        self.optimizers = [optimizer_factory([p]) for p in params]
        self._handles = [
            p.register_post_accumulate_grad_hook(self._make_hook(opt))
            for p, opt in zip(params, self.optimizers)
        ]

    @staticmethod
    def _make_hook(opt: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def step_and_free(_param: torch.Tensor) -> None:
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step_and_free

    def step(self) -> None:
        """No-op: every parameter was already stepped during backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No-op: gradients are freed during backward."""

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every per-parameter optimizer (for LR schedules)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, dict]:
        """Per-parameter optimizer states, keyed by position (for single-process saving)."""
        return {str(i): opt.state_dict() for i, opt in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Restore what ``state_dict`` returned; the model must have the same parameters."""
        if len(state) != len(self.optimizers):
            raise ValueError(
                f"optimizer-in-backward state holds {len(state)} parameter states, this model "
                f"has {len(self.optimizers)} trainable parameters"
            )
        for i, opt in enumerate(self.optimizers):
            opt.load_state_dict(state[str(i)])

    def remove(self) -> None:
        """Detach the backward hooks (after training, to use a normal optimizer again)."""
        for handle in self._handles:
            handle.remove()


def optimizer_in_backward(
    model: nn.Module,
    optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    gradient_accumulation_steps: int = 1,
) -> OptimizerInBackward:
    """Step the optimizer inside backward (see ``OptimizerInBackward``).

    Refused with gradient accumulation: each gradient is consumed and freed by its step as
    soon as one micro-batch's backward produces it, so nothing is left to accumulate.
    """
    if gradient_accumulation_steps != 1:
        raise ValueError(
            f"optimizer_in_bwd=True cannot be combined with gradient_accumulation_steps="
            f"{gradient_accumulation_steps}: the optimizer steps and frees each gradient during "
            "every backward, so gradients are never accumulated over micro-batches. Set "
            "gradient_accumulation_steps=1 or optimizer_in_bwd=False"
        )
    return OptimizerInBackward(model, optimizer_factory)
