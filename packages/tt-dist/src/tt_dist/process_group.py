"""Process-group setup from the torchrun environment, device choice and rank-aware printing."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_BACKENDS = ("auto", "nccl", "gloo")
# Variables torchrun sets for every worker; all of them are needed to join a group.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``backend`` is None for a single-process run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_distributed(self) -> bool:
        """True when a process group is in use (launched by torchrun)."""
        return self.backend is not None


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} (set by torchrun) must be a non-negative integer"
        ) from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r} must be a non-negative integer")
    return value


def _launched_by_torchrun() -> bool:
    present = [name for name in _TORCHRUN_VARS if name in os.environ]
    if present and len(present) != len(_TORCHRUN_VARS):
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        raise RuntimeError(
            f"incomplete torchrun environment: {present} are set but {missing} are not; "
            "launch with `torchrun` (or `tt run --nproc_per_node N`), or unset them all for "
            "a single-process run"
        )
    return bool(present)


def get_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Resolve a device name: "auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N".

    Under torchrun, "auto" and "cuda" pick ``cuda:LOCAL_RANK`` so each process gets its own GPU.
    """
    if local_rank is None:
        local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was requested but CUDA is not available on this machine; "
                "use device='cpu' or 'auto'"
            )
        index = local_rank if name == "cuda" else int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} (index {index}) does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {name!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(_BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device, but the device is {device}")
    if backend == "auto":
        # gloo on CPU too, so CPU-offloaded tensors (and DCP metadata) can be communicated.
        return "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    return backend


def init_distributed(
    backend: str = "auto", device: str = "auto", timeout_s: float = 600.0
) -> DistInfo:
    """Join the process group torchrun describes, or describe a single process without one.

    Not under torchrun (no RANK/WORLD_SIZE/... in the environment) this creates nothing and
    returns rank 0 of 1. Calling it again after the group exists returns the same info.
    Backend "auto" means nccl on CUDA (plus gloo for CPU tensors) and gloo on CPU.
    """
    if not _launched_by_torchrun():
        return DistInfo(0, 1, 0, get_device(device, local_rank=0), None)
    _exit_with_the_launcher()
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK")
    if rank >= world_size:
        raise ValueError(f"RANK={rank} must be smaller than WORLD_SIZE={world_size}")
    dev = get_device(device, local_rank=local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    resolved = _resolve_backend(backend, dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=resolved, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(rank, world_size, local_rank, dev, resolved)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_the_launcher() -> None:
    """Die when torchrun's agent dies (Linux). torchrun starts each worker in a session of its
    own, so a SIGKILL of the launcher's process group leaves the workers running: they would
    go on training, saving and pruning checkpoints while a resumed run reads them."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher or launcher == 1:  # the launcher died before prctl
        os._exit(1)


def destroy_distributed(barrier: bool = True) -> None:
    """Leave and destroy the process group if one exists (safe to call more than once).

    ``barrier=False`` leaves without waiting for the other ranks (after an error or an
    interrupt, when they may be gone already)."""
    if is_distributed():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group exists (the process was launched by torchrun)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def sum_over_ranks(value: float) -> float:
    """A number summed over all processes (the number itself in a single process)."""
    return _all_reduce(value, "sum")


def max_over_ranks(value: float) -> float:
    """The largest of a number over all processes."""
    return _all_reduce(value, "max")


def _all_reduce(value: float, op: str) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(tensor.item())


def full_value(tensor: torch.Tensor) -> float:
    """A scalar that may be a sharded DTensor (e.g. FSDP's total grad norm) as a float."""
    full = getattr(tensor, "full_tensor", None)
    return float(full() if full is not None else tensor)


def get_rank() -> int:
    """This process's global rank, 0 when no process group exists."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the job, 1 when no process group exists."""
    return dist.get_world_size() if is_distributed() else 1


def is_rank_zero() -> bool:
    """True on the process that prints, logs and writes single-copy files."""
    return get_rank() == 0


def rank_zero_print(*args: object, **kwargs) -> None:
    """``print`` on rank 0 only, so N processes do not print N copies."""
    if is_rank_zero():
        print(*args, **kwargs)


def rank_zero_log(logger: logging.Logger, msg: str, level: int = logging.INFO) -> None:
    """Log ``msg`` on rank 0 only."""
    if is_rank_zero():
        logger.log(level, msg)
