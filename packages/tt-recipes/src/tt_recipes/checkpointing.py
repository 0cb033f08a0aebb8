"""Where checkpoints are written, what they hold, and resuming from them.

A checkpoint is ``<root>/step_N/`` (``root`` = ``checkpointer.output_dir``, else
``output_dir``):

- the trained model(s) exported for use: Hugging Face files at the top, or one subdirectory
  per model when a recipe trains several (PPO's ``policy/`` and ``value/``);
- ``training_state/``: a torch.distributed.checkpoint of every trained model's weights and
  optimizer shards plus the run's other stateful parts (schedule, RNG, progress, data or
  rollout position), so a run resumes exactly on any number of processes.

Each save is written under hidden names and renamed into place when complete, so a crash,
Ctrl-C or a full disk never leaves a half-written ``step_N``; old checkpoints are pruned only
after the new one is complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import tt_dist
from omegaconf import DictConfig
from tt_ckpt import atomic_directory

from tt_recipes.pretrained import save_pretrained

log = logging.getLogger("tt")

TRAINING_STATE_DIR = "training_state"
STEP_DIR_PREFIX = "step_"

# Writes one trained model into a checkpoint directory. Every rank calls it (gathering a
# sharded model is collective); the directory is given on rank 0 only (None elsewhere).
Exporter = Callable[[Path | None], None]


class Stateful(Protocol):
    """A part of a run saved in ``training_state/`` (a scheduler, RNG, progress counters)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (its temporary files are already removed)."""


def checkpoint_root(cfg: DictConfig) -> Path:
    """The directory holding a run's ``step_N`` checkpoints."""
    return Path(cfg.checkpointer.get("output_dir") or cfg.output_dir)


# ---------------------------------------------------------------------------------------------
# step_N directories


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{STEP_DIR_PREFIX}{step}"


def complete_step_dirs(root: str | Path) -> list[Path]:
    """``step_N`` directories under ``root``, oldest first (temporary ones excluded: an
    unfinished save lives in a hidden sibling until it is renamed into place)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(STEP_DIR_PREFIX)
        and p.name[len(STEP_DIR_PREFIX) :].isdigit()
    ]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_DIR_PREFIX) :]))


def latest_step_dir(root: str | Path) -> Path | None:
    dirs = complete_step_dirs(root)
    return dirs[-1] if dirs else None


def latest_resumable_dir(root: str | Path) -> Path | None:
    """The newest ``step_N`` that holds a training state."""
    dirs = [d for d in complete_step_dirs(root) if (d / TRAINING_STATE_DIR).is_dir()]
    return dirs[-1] if dirs else None


def remove_unfinished_saves(root: str | Path) -> None:
    """Delete temporary directories left by a save that was killed before it completed."""
    root = Path(root)
    if not root.is_dir():
        return
    for tmp in root.glob(f".{STEP_DIR_PREFIX}*"):
        log.info(f"Removing unfinished checkpoint {tmp.name} (the run stopped while saving it)")
        shutil.rmtree(tmp, ignore_errors=True)


def prune_checkpoints(root: str | Path, keep_last_n: int | None) -> None:
    """Delete all but the newest ``keep_last_n`` step directories (run after a save completes)."""
    if not keep_last_n:
        return
    for old in complete_step_dirs(root)[:-keep_last_n]:
        log.info(f"Removing old checkpoint {old}")
        shutil.rmtree(old)


def last_checkpoint_note(root: str | Path) -> str:
    """ "the last complete checkpoint is step_N" or "no checkpoint was saved yet"."""
    latest = latest_step_dir(root)
    return f"the last complete checkpoint is {latest}" if latest else "no checkpoint was saved yet"


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    models: Mapping[str, tt_dist.TrainedModel],
    state: Mapping[str, Stateful],
    exports: Mapping[str, Exporter],
    keep_last_n: int | None = None,
    training_state: bool = True,
) -> Path:
    """Write ``root/step_N``: every model of ``exports`` (at the top when there is one, else in
    a subdirectory per name) and, with ``training_state``, the resumable state of ``models``
    and ``state``. All ranks call this.

    Raises:
        CheckpointSaveError: the save failed (e.g. the disk is full); nothing of it is left
            behind and earlier checkpoints are untouched.
    """
    root = Path(root)
    final = step_dir(root, step)
    staged = root / f".{final.name}.state"
    rank0 = tt_dist.is_rank_zero()
    try:
        if training_state:
            extra = {name: part.state_dict() for name, part in state.items()}
            tt_dist.save_distributed_state(staged, models, extra=extra)
        with atomic_directory(final) if rank0 else nullcontext(None) as tmp:
            for name, export in exports.items():
                where = None if tmp is None else (tmp / name if len(exports) > 1 else tmp)
                export(where)
            if rank0 and training_state:
                os.replace(staged, tmp / TRAINING_STATE_DIR)
    except BaseException as error:
        if rank0:
            shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(staged.with_name(staged.name + ".tmp"), ignore_errors=True)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        interrupt = _find(error, KeyboardInterrupt)  # DCP wraps one that arrived mid-write
        if interrupt is not None:
            raise interrupt from None
        # torch.distributed.checkpoint's CheckpointException is a BaseException.
        raise _save_error(error, final, models) from error
    if rank0:
        log.info(f"Saved checkpoint {final}")
        prune_checkpoints(root, keep_last_n)
    tt_dist.barrier()
    return final


def _save_error(error: BaseException, final: Path, models: Mapping[str, Any]) -> Exception:
    """One line for a failed save: what, where, why, how much room it needs, what is intact."""
    intact = last_checkpoint_note(final.parent)
    if not is_disk_full(error):
        return CheckpointSaveError(
            f"saving {final} failed: {type(error).__name__}: {_first_line(error)}; nothing of "
            f"it was kept and {intact}"
        )
    needed = sum(_state_bytes(part) for part in models.values())
    return CheckpointSaveError(
        f"{disk_full(final, needed, 'for the training state alone')}; nothing of it was kept "
        f"and {intact}. Free some space (keep_last_n_checkpoints prunes old ones), or set "
        "checkpointer.output_dir to a larger disk, then resume with resume_from_checkpoint=true"
    )


def disk_full(path: Path, needed: int, what: str = "") -> str:
    """ "no space left on device while saving PATH: it needs about N MiB ... and M MiB are
    free there"."""
    free = shutil.disk_usage(path.parent).free
    return (
        f"no space left on device while saving {path}: it needs about {needed / 2**20:.0f} MiB"
        f"{' ' + what if what else ''} and {free / 2**20:.0f} MiB are free there"
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, its chain, and the per-rank failures torch.distributed.checkpoint collects."""
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "failures", None)
        if isinstance(failures, Mapping):
            stack += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        stack += [x for x in (e.__cause__, e.__context__) if x is not None]


def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _causes(error) if isinstance(e, kind)), None)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the error's causes."""
    return any(
        (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)
        for e in _causes(error)
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _state_bytes(part: tt_dist.TrainedModel) -> int:
    """Bytes of a model's saved parameters plus its optimizer's tensors (this rank)."""
    params = [p for p in part.model.parameters() if p.requires_grad or not part.trainable_only]
    total = sum(p.numel() * p.element_size() for p in params)
    optimizers = getattr(part.optimizer, "optimizers", None) or (
        [part.optimizer] if part.optimizer is not None else []
    )
    for optimizer in optimizers:
        for value in optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in value.values() if torch.is_tensor(t))
    return total


# ---------------------------------------------------------------------------------------------
# Exporting a model into a checkpoint


def source_dir(cfg: DictConfig) -> Path | str | None:
    """Where a run's config fields and tokenizer files come from: its starting checkpoint,
    else the tokenizer's directory."""
    from tt_recipes.training import resolve_checkpoint_dir

    checkpoint_dir = cfg.checkpointer.get("checkpoint_dir")
    if checkpoint_dir:
        return resolve_checkpoint_dir(checkpoint_dir, announce=False)
    return cfg.tokenizer.get("path")


def save_hf_model(
    model: torch.nn.Module, cfg: DictConfig, tokenizer: Any, directory: Path, **kwargs: Any
) -> None:
    """``model`` as a HF directory, with config fields and tokenizer files from the run's
    source and the tokenizer's special ids (so generation stops where training did)."""
    from tt_recipes.training import token_id_config

    save_pretrained(
        model,
        directory,
        source_dir=source_dir(cfg),
        max_shard_size=cfg.checkpointer.max_shard_size,
        config_updates=token_id_config(tokenizer),
        **kwargs,
    )
    write_generation_config(directory, tokenizer)


def write_generation_config(directory: Path, tokenizer: Any) -> None:
    """``generation_config.json`` with the tokenizer's stop tokens, so transformers'
    ``generate`` stops where tt's does; sampling fields of the source's file are kept."""
    path = Path(directory) / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    stops = sorted(set(getattr(tokenizer, "stop_tokens", None) or [tokenizer.eos_id]))
    ids = {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
           "eos_token_id": stops[0] if len(stops) == 1 else stops}  # fmt: skip
    config.update({key: value for key, value in ids.items() if value is not None})
    path.write_text(json.dumps(config, indent=2) + "\n")


def full_model_exporter(model: torch.nn.Module, cfg: DictConfig, tokenizer: Any) -> Exporter:
    """Exports every weight of ``model`` (gathered to rank 0 when sharded) as a HF directory."""

    def export(directory: Path | None) -> None:
        full_sd = tt_dist.gather_full_state_dict(model) if tt_dist.is_distributed() else None
        if directory is not None:
            save_hf_model(model, cfg, tokenizer, directory, state_dict=full_sd)

    return export


# ---------------------------------------------------------------------------------------------
# Resuming


def resume_checkpoint(
    root: str | Path,
    *,
    models: Mapping[str, tt_dist.TrainedModel],
    state: Mapping[str, Stateful],
) -> Path:
    """Restore ``models`` and every part of ``state`` from the newest resumable checkpoint
    under ``root`` (written by any number of processes: the shards are redistributed).
    Returns that checkpoint's directory."""
    remove_unfinished_saves(root)
    latest = latest_resumable_dir(root)
    if latest is None:
        found = latest_step_dir(root)
        why = (
            f"its newest checkpoint {found.name} holds no {TRAINING_STATE_DIR}/ (saved with "
            "save_final_training_state=false)"
            if found
            else "it holds no complete step_N checkpoint"
        )
        raise FileNotFoundError(
            f"resume_from_checkpoint=true but {root}: {why}; start without "
            "resume_from_checkpoint or point output_dir at the earlier run"
        )
    extra = tt_dist.load_distributed_state(latest / TRAINING_STATE_DIR, models)
    for name, part in state.items():
        if name not in extra:
            raise ValueError(
                f"{latest / TRAINING_STATE_DIR} holds no state for {name!r} (it holds "
                f"{sorted(extra)}): it was written by another recipe or tt version"
            )
        try:
            part.load_state_dict(extra[name])
        except ValueError as e:
            raise ValueError(f"{latest}: {e}") from None
    return latest


class RNGState:
    """The process's torch (and CUDA) random number generators, as a stateful part."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
