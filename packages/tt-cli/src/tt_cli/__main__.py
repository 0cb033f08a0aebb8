"""``python -m tt_cli`` is the ``tt`` command (used by torchrun workers and tests)."""

from tt_cli.main import run_tt

run_tt()
