"""A toy recipe and components for the config tests.

Tests put this directory on sys.path so ``toy_components.build_model`` resolves like any
installed component; the module doubles as a recipe file (SPEC + recipe_main).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from tt_recipes.config import ConfigKey, RecipeSpec, instantiate


def build_model(dim: int, n_layers: int = 2, norm: nn.Module | None = None) -> nn.Sequential:
    """``n_layers`` Linear(dim, dim) layers, then ``norm`` when given."""
    layers: list[nn.Module] = [nn.Linear(dim, dim) for _ in range(n_layers)]
    return nn.Sequential(*layers, *([norm] if norm is not None else []))


def describe(name: str, tags: list | None = None, scale: float = 1.0) -> dict:
    """Echo the arguments, to see what instantiate passed."""
    return {"name": name, "tags": tags, "scale": scale}


SPEC = RecipeSpec(
    name="toy",
    description="Trains a few Linear layers for one step (config-system tests).",
    keys={
        "output_dir": ConfigKey(str, required=True, doc="where results go"),
        "log_dir": ConfigKey(str),
        "batch_size": ConfigKey(int, default=4),
        "epochs": ConfigKey(int, default=1),
        "dtype": ConfigKey(Literal["fp32", "bf16"], default="fp32"),
        "model": ConfigKey(component=True, required=True),
        "optimizer": ConfigKey(component=True, required=True, positional=1),
        "checkpointer": ConfigKey(
            keys={
                "checkpoint_dir": ConfigKey(str, required=True),
                "max_shards": ConfigKey(Optional[int]),
            }
        ),
    },
    aliases=("toy_single_device",),
)


def recipe_main(cfg: DictConfig) -> None:
    """One optimizer step; writes the loss and config facts to output_dir/result.json."""
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer, model.parameters())
    dim = model[0].in_features
    loss = model(torch.randn(cfg.batch_size, dim)).pow(2).mean()
    loss.backward()
    optimizer.step()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "epochs": cfg.epochs}
    (out / "result.json").write_text(json.dumps(facts))
