"""Tests of tt against torchtune 0.6.1's configs (see torchtune_wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from torchtune_wheel import TorchtuneConfig, shipped_configs  # noqa: E402


@pytest.fixture(scope="session")
def torchtune_configs() -> list[TorchtuneConfig]:
    return shipped_configs()[0]
