"""Fixtures: the toy recipe on the path, a config for it, and a registry that knows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tt_recipes import registry

HERE = Path(__file__).parent
RECIPE = str(HERE / "toy_recipe.py")
TOY_YAML = """\
output_dir: {out}
batch_size: 2
model:
  _component_: toy_recipe.Model
  dim: 8
  norm:
    _component_: toy_recipe.Norm
    eps: 1.0e-6
optimizer:
  _component_: toy_recipe.Optimizer
  lr: 0.01
"""


@pytest.fixture(autouse=True)
def toy_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def recipe_file() -> str:
    """Path of the toy recipe file, as a user would pass it to `tt run`."""
    return RECIPE


@pytest.fixture
def toy_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML.format(out=tmp_path / "out"))
    return path


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The registry with the toy recipe, a torchtune-style alias and bundled tiny/toy."""
    config_dir = tmp_path / "configs"
    (config_dir / "tiny").mkdir(parents=True)
    (config_dir / "tiny" / "toy.yaml").write_text(TOY_YAML.format(out=tmp_path / "bundled"))
    monkeypatch.setattr(registry, "RECIPES", {"toy": "toy_recipe"})
    monkeypatch.setattr(registry, "TORCHTUNE_ALIASES", {"toy_distributed": "toy"})
    monkeypatch.setattr(registry, "CONFIGS", {"tiny/toy": "toy"})
    monkeypatch.setattr(registry, "TORCHTUNE_CONFIGS", {"tiny/toy_single_device": "tiny/toy"})
    monkeypatch.setattr(registry, "CONFIG_DIR", config_dir)
    return config_dir


def _run_tt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "TT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "tt_cli", *args],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(HERE), **(env or {})},
        timeout=120,
    )


@pytest.fixture
def run_tt():
    """Runs the real ``tt`` entry point (python -m tt_cli) in a subprocess."""
    return _run_tt
