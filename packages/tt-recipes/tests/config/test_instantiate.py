"""instantiate() and resolve_component(): building objects from _component_ mappings."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from tt_recipes.config import ConfigError, instantiate, resolve_component


def test_optimizer_gets_runtime_params_and_config_kwargs(toy_cfg):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3))]
    optimizer = instantiate(toy_cfg.optimizer, params)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.9, 0.95)
    assert group["params"][0] is params[0]


def test_nested_component_is_built_first_and_passed_in(toy_cfg):
    model = instantiate(toy_cfg.model)
    assert [type(m) for m in model] == [nn.Linear, nn.Linear, nn.LayerNorm]
    assert model[2].normalized_shape == (8,)


def test_runtime_kwargs_override_config_keys(toy_cfg):
    model = instantiate(toy_cfg.model, n_layers=1)
    assert [type(m) for m in model] == [nn.Linear, nn.LayerNorm]


def test_interpolations_are_resolved_and_lists_of_components_built():
    cfg = OmegaConf.create(
        {
            "name": "run-7",
            "thing": {
                "_component_": "toy_components.describe",
                "name": "${name}",
                "tags": [{"_component_": "torch.nn.Identity"}, "plain"],
                "scale": 0.5,
            },
        }
    )
    built = instantiate(cfg.thing)
    assert built["name"] == "run-7" and built["scale"] == 0.5
    assert isinstance(built["tags"][0], nn.Identity) and built["tags"][1] == "plain"


def test_plain_dict_node_and_none():
    assert instantiate(None) is None
    assert isinstance(instantiate({"_component_": "torch.nn.ReLU"}), nn.ReLU)


def test_node_without_component_is_an_error():
    with pytest.raises(ConfigError, match=r"needs a mapping with a '_component_' key, got \{'lr'"):
        instantiate(OmegaConf.create({"lr": 1.0}))


def test_resolve_finds_classes_and_functions():
    assert resolve_component("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve_component("math.sqrt") is math.sqrt


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "torch.optim.AdamWW",
            "cannot import 'torch.optim.AdamWW': 'torch.optim' has no attribute 'AdamWW' "
            "(did you mean 'torch.optim.AdamW'?)",
        ),
        (
            "torch.optm.AdamW",
            "cannot import 'torch.optm.AdamW': 'torch' has no attribute 'optm' "
            "(did you mean 'torch.optim'?)",
        ),
        ("torhc.optim.AdamW", "cannot import 'torhc.optim.AdamW': no module named 'torhc'"),
        ("math.pi", "'math.pi' is a float, not a callable"),
        (
            "torch..nn",
            "_component_ must be a dotted path like 'torch.optim.AdamW', got 'torch..nn'",
        ),
    ],
)
def test_resolve_errors_name_the_module_and_the_closest_name(path, message):
    with pytest.raises(ConfigError) as e:
        resolve_component(path, where="key 'optimizer._component_'")
    assert str(e.value).startswith(f"key 'optimizer._component_': {message}")


def test_misspelt_top_level_module_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"no module named 'trch' \(did you mean 'torch'\?\)"):
        resolve_component("trch.nn.Linear")
