"""The one error type of the config system, and did-you-mean suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config, override, recipe name or component path is wrong.

    The message names the bad value, where it came from (file and key path) and what would
    be valid. The CLI prints it without a traceback and exits with status 2.
    """


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = closest(name, candidates)
    return f" (did you mean '{match}'?)" if match else ""
