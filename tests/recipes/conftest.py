"""Recipe tests that need the `tt` command (tt-cli), so they run in the integration session.

They reuse tt-recipes' test helpers (run a bundled config in-process, read logged losses).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).parents[2] / "packages" / "tt-recipes" / "tests" / "recipes"
sys.path.insert(0, str(HELPERS))
sys.path.insert(0, str(Path(__file__).parent))  # tiny_chain, shared with bench/

from recipe_testing import train_tiny_full, train_tiny_reward  # noqa: E402


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_full(tmp_path_factory.mktemp("tiny_full"))


@pytest.fixture(scope="session")
def tiny_reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_full_run: Path) -> Path:
    """A short tiny/reward_model run on the shared tiny/full checkpoint (for PPO tests)."""
    return train_tiny_reward(tmp_path_factory.mktemp("tiny_reward"), tiny_full_run)
