"""Puts recipe_testing on sys.path (importlib mode does not) and shares one tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from recipe_testing import train_tiny_full, train_tiny_reward  # noqa: E402


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short tiny/full run shared by the tests that need a trained checkpoint."""
    return train_tiny_full(tmp_path_factory.mktemp("tiny_full"))


@pytest.fixture(scope="session")
def tiny_reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_full_run: Path) -> Path:
    """A short tiny/reward_model run on the shared tiny/full checkpoint (for PPO tests)."""
    return train_tiny_reward(tmp_path_factory.mktemp("tiny_reward"), tiny_full_run)
