"""What a user sees in the terminal: tt's own log lines, and dependencies kept quiet about
what is not the user's concern. Imports nothing heavy (the CLI calls it before torch loads)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers of dependencies that narrate their internals at INFO/WARNING on every command.
_CHATTY_LOGGERS = {
    "torch.utils._pytree": logging.ERROR,  # torchao registers enums torch now supports natively
    "lm_eval": logging.WARNING,  # seeds, task lists, "building contexts" on every evaluation
    "lm-eval": logging.WARNING,
    "datasets": logging.WARNING,
    "torchao": logging.WARNING,
    # bitsandbytes on an AVX-512 CPU misses an optional kernel package; tt's optimizers from
    # bitsandbytes do not use it.
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
    # compile on a CPU with torch's CUDA build: "No CUDA runtime is found, using CUDA_HOME=..."
    # (inductor looks for CUDA while building its C++ kernels; the run is on the CPU anyway).
    "torch.utils.cpp_extension": logging.ERROR,
}


def quiet_dependencies() -> None:
    """Silence dependency messages that are about the dependency, not about the user's run."""
    for name, level in _CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # torch.distributed.checkpoint narrates every save at DEBUG through its own handler.
    logging.getLogger("c10d-NullHandler-dcp_logger").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*torch.distributed is disabled.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchao(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lm_eval(\..*)?")


def setup_logging(level_name: str = "INFO") -> None:
    """Human-readable log lines at ``level_name`` and above on rank 0 (a config's
    ``log_level``); other ranks log warnings and errors only."""
    level = getattr(logging, level_name)
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)
    quiet_dependencies()
