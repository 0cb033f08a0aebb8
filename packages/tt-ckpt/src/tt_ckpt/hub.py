"""Download a model repository from the Hugging Face Hub into a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tt_ckpt.errors import DownloadError

# Written by download next to the files: which hub repository (and revision) they came from,
# so an adapter trained on them names the repository, not a local path.
SOURCE_FILE = "tt_source.json"


def _endpoint() -> str:
    from huggingface_hub import constants

    # Read the environment at call time: huggingface_hub freezes HF_ENDPOINT at import.
    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def _explain(error: Exception, repo_id: str, revision: str | None, endpoint: str) -> str:
    """One paragraph saying what failed and what to do, by hub error type."""
    from huggingface_hub import errors

    what = f"Downloading {repo_id!r} (revision {revision or 'main'}) from {endpoint} failed"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, errors.GatedRepoError):
        return (
            f"{what}: the repository is gated. Accept its licence at {endpoint}/{repo_id} with "
            f"your account, then pass token= or set HF_TOKEN to a token of that account."
        )
    if isinstance(error, errors.RepositoryNotFoundError):
        return (
            f"{what}: the repository was not found or you are not allowed to see it. Check the "
            f"repo id; for a private repository pass token= or set HF_TOKEN."
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return f"{what}: the revision does not exist. Use a branch, tag or commit of that repo."
    if status in (401, 403):
        return (
            f"{what}: unauthorised (HTTP {status}). Pass token= or set HF_TOKEN to a valid "
            f"token with read access (https://huggingface.co/settings/tokens)."
        )
    if _is_offline(error):
        return (
            f"{what}: offline mode is on (HF_HUB_OFFLINE=1) and the files are not cached. Unset "
            f"HF_HUB_OFFLINE on a machine with network access, or copy the model directory in."
        )
    if isinstance(error, errors.LocalEntryNotFoundError):
        return (
            f"{what}: the hub could not be reached and no cached copy exists ({error}). Check "
            f"the network connection and HF_ENDPOINT, or copy the model directory in."
        )
    if isinstance(error, errors.HFValidationError):
        return f"{what}: {error} Repo ids look like 'meta-llama/Llama-3.2-1B'."
    return f"{what}: {type(error).__name__}: {error}"


def _is_offline(error: BaseException | None) -> bool:
    from huggingface_hub import errors

    while error is not None:
        if isinstance(error, errors.OfflineModeIsEnabled):
            return True
        error = error.__cause__ or error.__context__
    return False


def download(
    repo_id: str,
    output_dir: str | Path,
    *,
    token: str | None = None,
    ignore_patterns: list[str] | str | None = None,
    revision: str | None = None,
) -> Path:
    """Download every file of a hub model repo into ``output_dir``; return that path.

    ``token`` falls back to ``$HF_TOKEN``. Failures (offline, unauthorised, gated, not found)
    raise ``DownloadError`` with a message saying what to do.

    Example::

        download("meta-llama/Llama-3.2-1B", "/models/llama3_2_1b", ignore_patterns=["original/*"])
    """
    try:
        from huggingface_hub import errors, snapshot_download
    except ImportError as error:  # declared dependency, but give a clear message if removed
        raise DownloadError(
            "download needs huggingface_hub; install tt-ckpt with its dependencies "
            "(pip install tt-ckpt)."
        ) from error

    endpoint = _endpoint()
    try:
        path = snapshot_download(
            repo_id,
            local_dir=str(output_dir),
            token=token or os.environ.get("HF_TOKEN") or None,
            ignore_patterns=ignore_patterns,
            revision=revision,
            endpoint=endpoint,
        )
    except (OSError, errors.HFValidationError) as error:
        # HfHubHTTPError and LocalEntryNotFoundError are OSErrors.
        raise DownloadError(_explain(error, repo_id, revision, endpoint)) from error
    source = {"repo_id": repo_id, "revision": revision or "main"}
    (Path(path) / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return Path(path)


def hub_repo_id(directory: str | Path) -> str | None:
    """The hub repository ``download`` fetched ``directory`` from, or None (not downloaded by
    tt, or a file that is not ours to trust: only a plain string id is returned)."""
    path = Path(directory) / SOURCE_FILE
    try:
        repo_id = json.loads(path.read_text()).get("repo_id")
    except (OSError, ValueError, AttributeError):
        return None
    return repo_id if isinstance(repo_id, str) and repo_id else None
