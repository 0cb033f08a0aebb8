"""Training-state files and atomic directory writes.

A crash mid-save must never leave a half-written file or directory where a complete one is
expected: files are written to a temporary sibling and moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tt_ckpt.errors import CheckpointError, CorruptFileError, MissingFilesError


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_directory(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``final_path`` only on success.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and an
    existing ``final_path`` is left untouched. On success an existing ``final_path`` is replaced.

    Example::

        with atomic_directory(output_dir / "step_100") as tmp:
            save_training_state(tmp / "training_state.pt", state)
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final_path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, final_path)


def _move_into_place(tmp: Path, final_path: Path) -> None:
    if final_path.is_file() or final_path.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write directory {final_path}: a file with that name exists; remove it or "
            f"choose another output path."
        )
    old = None
    if final_path.exists():
        # Move the old directory aside first: os.replace cannot replace a non-empty directory.
        old = _temp_sibling(final_path, "old")
        os.replace(final_path, old)
    try:
        os.replace(tmp, final_path)
    except BaseException:
        if old is not None:
            os.replace(old, final_path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save optimizer/scheduler/RNG/data-position state with ``torch.save``, atomically.

    Values must be loadable with ``weights_only=True``: tensors, numbers, strings, lists,
    tuples and dicts of those (e.g. ``optimizer.state_dict()``, ``torch.get_rng_state()``).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def torch_load_dict(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True, mmap=True)`` of a dict, with errors naming the file."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CorruptFileError(path, error) from error
        raise CheckpointError(
            f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle "
            f"({str(error).splitlines()[-1]}). Store only tensors, numbers, strings and "
            f"lists/tuples/dicts of them (state_dict() outputs qualify)."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptFileError(path, error) from error
    if not isinstance(state, dict):
        raise CorruptFileError(path, f"it holds a {type(state).__name__}, not a dict")
    return state


def load_training_state(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by ``save_training_state`` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFilesError(path.parent, f"the training-state file {path.name}")
    return torch_load_dict(path, map_location)
