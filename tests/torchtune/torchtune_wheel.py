"""torchtune 0.6.1's shipped configs and recipe registry, read as data.

The integration session installs the torchtune wheel without its dependencies: nothing here
imports torchtune (it needs an older torchao than tt's); its registry module is plain
dataclasses and is loaded from its file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TorchtuneConfig:
    recipe: str  # torchtune's recipe name, as `tune run` takes it
    name: str  # torchtune's config name, as `tune cp` takes it
    path: Path


def _wheel_root() -> Path:
    try:
        return Path(importlib.metadata.distribution("torchtune").locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "torchtune 0.6.1 is not installed: `uv run nox -s integration` installs it "
            "(pip install --no-deps torchtune==0.6.1 in another environment)"
        )


def shipped_configs() -> tuple[list[TorchtuneConfig], list[str]]:
    """Every config torchtune's registry lists with its recipe, and the registry entries
    whose file the wheel does not ship."""
    root = _wheel_root()
    spec = importlib.util.spec_from_file_location(
        "_torchtune_recipe_registry", root / "torchtune" / "_recipe_registry.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    configs, missing = [], []
    for recipe in module.get_all_recipes():
        for config in recipe.configs:
            path = root / "recipes" / "configs" / config.file_path
            if path.is_file():
                configs.append(TorchtuneConfig(recipe.name, config.name, path))
            else:
                missing.append(f"{recipe.name} {config.name} ({config.file_path})")
    return configs, missing
