"""Errors raised by tt_ckpt.

Every error is a ``CheckpointError`` so a caller can catch one type; the subclasses say which
kind of problem it was. Messages name the bad value, where it came from and what is valid.
"""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """Base class of every error tt_ckpt raises."""


class MissingFilesError(CheckpointError):
    """Files a checkpoint needs are not in the directory."""

    def __init__(self, directory: str | Path, expected: str, *, detail: str = "") -> None:
        directory = Path(directory)
        found = describe_directory(directory)
        extra = f" {detail}" if detail else ""
        super().__init__(
            f"{directory}: expected {expected}, but it is not there.{extra} "
            f"The directory contains: {found}."
        )


class MissingShardError(MissingFilesError):
    """An index json references a shard file that does not exist."""

    def __init__(self, index_path: str | Path, missing: list[str]) -> None:
        index_path = Path(index_path)
        super().__init__(
            index_path.parent,
            f"the shard(s) {missing} referenced by {index_path.name}",
            detail="Re-download or re-save the checkpoint so every shard in the index exists.",
        )


class ShapeMismatchError(CheckpointError):
    """A tensor's shape differs from the shape the config says it must have."""

    def __init__(
        self,
        tensor: str,
        actual: tuple[int, ...],
        expected: tuple[int, ...],
        *,
        source: str | None,
        reason: str,
    ) -> None:
        where = f" in {source}" if source else ""
        super().__init__(
            f"tensor {tensor!r}{where} has shape {list(actual)}, but {reason} gives "
            f"{list(expected)}. The weights do not belong to this config."
        )


class UnknownKeyError(CheckpointError):
    """A state-dict key that the family's key map does not know."""

    def __init__(self, key: str, *, family: str, naming: str, source: str | None = None) -> None:
        where = f" (from {source})" if source else ""
        super().__init__(
            f"unknown {naming} key {key!r}{where} for model family {family!r}: the key map has no "
            f"rule for it. Check that the checkpoint is a {family!r} model, or add a rule to the "
            f"family's key map in tt_ckpt.keymaps."
        )


class UnknownFamilyError(CheckpointError):
    """A model family with no key map."""

    def __init__(self, family: object, valid: list[str], *, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"no key map for model family {family!r}{where}; known families: {valid}.")


class CorruptFileError(CheckpointError):
    """A weight or state file that cannot be read (truncated, bad header, not that format)."""

    def __init__(self, path: str | Path, cause: BaseException | str) -> None:
        super().__init__(
            f"cannot read {path}: {cause}. The file is truncated or corrupt; re-download or "
            f"re-save it."
        )


class DownloadError(CheckpointError):
    """A hub download failed (offline, unauthorised, not found, ...)."""


def describe_directory(directory: Path, limit: int = 30) -> str:
    """List a directory's entries for an error message (or say it does not exist)."""
    if not directory.is_dir():
        return "nothing (the directory does not exist)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not names:
        return "nothing (it is empty)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
