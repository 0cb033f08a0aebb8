"""Ctrl-C and SIGTERM end a run with one line and an exit code, never half-written files.

Both arrive as ``KeyboardInterrupt`` (SIGTERM through :func:`sigterm_as_interrupt`), so the
clean-up every save already does for Ctrl-C (temporary checkpoint directories removed,
earlier checkpoints untouched) runs for a scheduler's SIGTERM too. The training loop turns it
into :class:`Interrupted`, whose message says where the run stopped and how to resume; the
CLI prints that message and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGINT_EXIT, SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int = SIGINT_EXIT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Interrupted` (exit code 143) like Ctrl-C would."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        raise Interrupted("terminated (SIGTERM)", SIGTERM_EXIT)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "exit_code", SIGINT_EXIT)
