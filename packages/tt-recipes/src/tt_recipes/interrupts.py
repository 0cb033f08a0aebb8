"""Ctrl-C and SIGTERM end a run with one line and an exit code, never half-written files.

Both arrive as ``KeyboardInterrupt`` (:func:`stop_on_signals`), so the
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
# Signals received inside stop_on_signals (the first one stops the run).
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int = SIGINT_EXIT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM raises :class:`Interrupted` (exit code 130
    or 143); later ones are ignored, so the clean-up the first one started (removing a
    half-written checkpoint) is not cut short. Under torchrun a worker gets Ctrl-C twice:
    from the terminal and from the agent."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    _received.clear()

    def stop(signum: int, frame: object) -> None:
        if _received:
            return
        _received.append(signum)
        raise as_interrupt(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def as_interrupt(signum: int) -> Interrupted:
    if signum == signal.SIGTERM:
        return Interrupted("terminated (SIGTERM)", SIGTERM_EXIT)
    return Interrupted("interrupted", SIGINT_EXIT)


def received() -> Interrupted | None:
    """The interrupt that stopped this run, if a signal arrived: also when what surfaced is
    another error it caused (under torchrun, a collective whose peer rank stopped first)."""
    return as_interrupt(_received[0]) if _received else None


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "exit_code", SIGINT_EXIT)
