"""A torch-free toy recipe for the CLI tests (subprocesses start fast without torch).

Tests put this directory on the path, so its components resolve as ``toy_recipe.X``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from tt_recipes.config import ConfigKey, RecipeSpec, instantiate


class Norm:
    def __init__(self, eps: float = 1e-5) -> None:
        self.eps = eps


class Model:
    def __init__(self, dim: int, norm: Norm | None = None) -> None:
        self.dim, self.norm = dim, norm


class Optimizer:
    def __init__(self, params: list, lr: float = 0.1, momentum: float = 0.0) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum


SPEC = RecipeSpec(
    name="toy",
    description="Builds a model and optimizer and writes what it got (CLI tests).",
    keys={
        "output_dir": ConfigKey(str, required=True, doc="where result.json goes"),
        "batch_size": ConfigKey(int, default=4),
        "epochs": ConfigKey(int, default=1),
        "fail": ConfigKey(bool, default=False, doc="raise inside the recipe"),
        "model": ConfigKey(component=True, required=True),
        "optimizer": ConfigKey(component=True, required=True, positional=1),
    },
)


def recipe_main(cfg: DictConfig) -> None:
    """Instantiate model and optimizer, write their settings to output_dir/result.json."""
    if cfg.fail:
        raise RuntimeError("the toy recipe was asked to fail")
    model = instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer, [model.dim])
    facts = {
        "dim": model.dim,
        "eps": model.norm.eps if model.norm else None,
        "optimizer": type(optimizer).__name__,
        "lr": optimizer.lr,
        "params": optimizer.params,
        "epochs": cfg.epochs,
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(facts))
