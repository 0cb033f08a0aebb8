"""Fixtures shared by the cross-package tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).parents[1] / "bench"


@pytest.fixture(scope="session")
def bench_script():
    """Import a script of bench/ as a module, ``bench_script("finetune_bench")``: bench/ goes
    on ``sys.path`` as when the script runs, so scripts may import each other."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module
