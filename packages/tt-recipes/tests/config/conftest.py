"""Puts toy_components (a recipe + components) on sys.path and hands out its config."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig
from tt_recipes.config import load_yaml

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def toy_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def toy_yaml() -> Path:
    return HERE / "toy.yaml"


@pytest.fixture
def toy_cfg(toy_yaml: Path) -> DictConfig:
    return load_yaml(toy_yaml)


@pytest.fixture
def toy_spec():
    import toy_components

    return toy_components.SPEC
