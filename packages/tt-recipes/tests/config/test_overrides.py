"""Command-line overrides: typed values, component swaps, deletion, and their errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from tt_recipes.config import ConfigError, apply_overrides, load_yaml


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("batch_size=16", "batch_size", 16),
        ("optimizer.lr=1e-4", "optimizer.lr", 1e-4),
        ("model.dim=12", "model.dim", 12),
        ("dtype=bf16", "dtype", "bf16"),
        ("flag=true", "flag", True),
        ("checkpointer.max_shards=null", "checkpointer.max_shards", None),
        ("optimizer.betas=[0.5, 0.6]", "optimizer.betas", [0.5, 0.6]),
        ("new.nested.key=3", "new.nested.key", 3),
        ("note=a=b", "note", "a=b"),  # only the first '=' separates key from value
    ],
)
def test_set_value_is_typed_by_yaml(toy_cfg, override, key, expected):
    value = OmegaConf.select(apply_overrides(toy_cfg, [override]), key)
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    assert value == expected and type(value) is type(expected)


def test_overrides_do_not_change_the_input(toy_cfg):
    apply_overrides(toy_cfg, ["batch_size=16", "~log_dir"])
    assert toy_cfg.batch_size == 2 and "log_dir" in toy_cfg


def test_later_override_wins(toy_cfg):
    assert apply_overrides(toy_cfg, ["batch_size=3", "batch_size=5"]).batch_size == 5


def test_dotted_path_on_a_component_sets_its_component_and_keeps_its_keys(toy_cfg):
    cfg = apply_overrides(toy_cfg, ["optimizer=torch.optim.SGD"])
    assert cfg.optimizer._component_ == "torch.optim.SGD"
    assert cfg.optimizer.lr == 1e-3 and list(cfg.optimizer.betas) == [0.9, 0.95]


def test_dotted_path_creates_a_component_the_recipe_declares(toy_cfg, toy_spec):
    cfg = apply_overrides(toy_cfg, ["~optimizer", "optimizer=torch.optim.SGD"], toy_spec)
    assert OmegaConf.to_container(cfg.optimizer) == {"_component_": "torch.optim.SGD"}


def test_string_on_a_plain_key_stays_a_string(toy_cfg, toy_spec):
    cfg = apply_overrides(toy_cfg, ["output_dir=some.dotted.name"], toy_spec)
    assert cfg.output_dir == "some.dotted.name"


def test_mapping_value_replaces_the_whole_node(toy_cfg):
    cfg = apply_overrides(toy_cfg, ["optimizer={_component_: torch.optim.SGD, lr: 0.5}"])
    assert OmegaConf.to_container(cfg.optimizer) == {"_component_": "torch.optim.SGD", "lr": 0.5}


def test_delete_top_level_and_nested_keys(toy_cfg):
    cfg = apply_overrides(toy_cfg, ["~log_dir", "~optimizer.betas"])
    assert "log_dir" not in cfg and "betas" not in cfg.optimizer


def test_interpolation_follows_an_overridden_value(toy_cfg):
    cfg = apply_overrides(toy_cfg, ["output_dir=/runs/a"])
    assert cfg.log_dir == "/runs/a/logs" and cfg.checkpointer.checkpoint_dir == "/runs/a/ckpt"


def test_interpolation_given_on_the_command_line(toy_cfg):
    cfg = apply_overrides(toy_cfg, ["log_dir=${output_dir}/tb"])
    assert cfg.log_dir == "/tmp/tt-toy/tb"


def test_delete_missing_key_suggests_the_close_one(toy_cfg):
    with pytest.raises(ConfigError) as e:
        apply_overrides(toy_cfg, ["~optimizer.beta"])
    assert str(e.value) == (
        "override '~optimizer.beta': there is no key 'optimizer.beta' to delete "
        "(did you mean 'optimizer.betas'?)"
    )


@pytest.mark.parametrize("bad", ["batch_size", "=3", "optimizer..lr=1"])
def test_malformed_override_names_itself_and_the_valid_forms(toy_cfg, bad):
    with pytest.raises(ConfigError, match="valid forms: key.sub=value") as e:
        apply_overrides(toy_cfg, [bad])
    assert repr(bad) in str(e.value)


def test_value_that_is_not_yaml(toy_cfg):
    with pytest.raises(ConfigError, match=r"override 'x=\[1, 2': the value '\[1, 2' is not valid"):
        apply_overrides(toy_cfg, ["x=[1, 2"])


def test_setting_below_a_scalar_fails_clearly(toy_cfg):
    with pytest.raises(ConfigError) as e:
        apply_overrides(toy_cfg, ["batch_size.x=1"])
    assert str(e.value) == (
        "override 'batch_size.x=1': 'batch_size' holds 2, not a mapping, so it has no key 'x'"
    )


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping"):
        load_yaml(listing)
