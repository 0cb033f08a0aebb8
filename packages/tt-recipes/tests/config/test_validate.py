"""validate_config / prepare_config: every failure names file, key path and a suggestion."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from tt_recipes.config import ConfigError, ConfigKey, RecipeSpec, prepare_config, validate_config

SRC = "toy.yaml"


def problems(cfg, spec, overrides=()) -> list[str]:
    """The lines of the ConfigError that validating ``cfg`` + ``overrides`` raises."""
    from tt_recipes.config import apply_overrides

    with pytest.raises(ConfigError) as e:
        validate_config(apply_overrides(cfg, overrides, spec), spec, SRC)
    return str(e.value).splitlines()


def test_valid_config_passes_and_gets_defaults(toy_cfg, toy_spec):
    cfg = validate_config(toy_cfg, toy_spec, SRC)
    assert cfg.epochs == 1 and cfg.dtype == "fp32"  # absent: filled from the spec
    assert cfg.batch_size == 2  # present: kept
    assert cfg.checkpointer.max_shards is None  # nested section default
    assert "epochs" not in toy_cfg  # the input is left alone


def test_prepare_config_loads_overrides_and_validates(toy_yaml, toy_spec):
    cfg = prepare_config(toy_spec, toy_yaml, ["epochs=3", "output_dir=/o"])
    assert cfg.epochs == 3 and cfg.log_dir == "/o/logs"
    with pytest.raises(ConfigError, match=r"^my-source: key 'epochs': expected int"):
        prepare_config(toy_spec, toy_yaml, ["epochs=three"], source="my-source")


def test_unknown_top_level_key(toy_cfg, toy_spec):
    assert problems(toy_cfg, toy_spec, ["batch_sise=3"]) == [
        "toy.yaml: key 'batch_sise' is unknown (did you mean 'batch_size'?); recipe 'toy' reads: "
        "output_dir, log_dir, batch_size, epochs, dtype, model, optimizer, checkpointer"
    ]


def test_unknown_key_in_a_declared_section(toy_cfg, toy_spec):
    assert problems(toy_cfg, toy_spec, ["checkpointer.checkpoint_dri=/c"]) == [
        "toy.yaml: key 'checkpointer.checkpoint_dri' is unknown (did you mean "
        "'checkpointer.checkpoint_dir'?); section 'checkpointer' reads: checkpoint_dir, max_shards"
    ]


def test_unknown_component_kwarg(toy_cfg, toy_spec):
    [line] = problems(toy_cfg, toy_spec, ["optimizer.betaz=[0.9, 0.9]"])
    assert line.startswith(
        "toy.yaml: key 'optimizer.betaz': torch.optim.AdamW takes no argument 'betaz' "
        "(did you mean 'betas'?); it takes: params, lr, betas, eps, weight_decay"
    )


def test_unknown_kwarg_of_a_nested_component(toy_cfg, toy_spec):
    [line] = problems(
        toy_cfg, toy_spec, ["model.norm.normalised_shape=8", "~model.norm.normalized_shape"]
    )
    assert line.startswith(
        "toy.yaml: key 'model.norm.normalised_shape': torch.nn.LayerNorm takes no argument "
        "'normalised_shape' (did you mean 'normalized_shape'?)"
    )


def test_bad_import_path(toy_cfg, toy_spec):
    assert problems(toy_cfg, toy_spec, ["optimizer=torch.optim.AdamWW"]) == [
        "toy.yaml: key 'optimizer._component_': cannot import 'torch.optim.AdamWW': "
        "'torch.optim' has no attribute 'AdamWW' (did you mean 'torch.optim.AdamW'?)"
    ]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("epochs=three", "key 'epochs': expected int, got str 'three'"),
        ("epochs=true", "key 'epochs': expected int, got bool True"),
        ("dtype=fp16", "key 'dtype': expected Literal['fp32', 'bf16'], got str 'fp16'"),
        (
            "checkpointer.max_shards=many",
            "key 'checkpointer.max_shards': expected int | None, got str 'many'",
        ),
        (
            "model.dim=eight",
            "key 'model.dim': toy_components.build_model expects int, got str 'eight'",
        ),
        ("optimizer.lr=fast", None),  # lr: float | Tensor -> cannot judge a str; AdamW will
        (
            "optimizer.weight_decay=high",
            "key 'optimizer.weight_decay': torch.optim.AdamW expects float, got str 'high'",
        ),
        (
            "checkpointer=/ckpt",
            "key 'checkpointer': expected a mapping with keys checkpoint_dir, max_shards, got '/ckpt'",
        ),
        ("model=3", "key 'model': expected a mapping with a '_component_' key, got 3"),
    ],
)
def test_wrong_type(toy_cfg, toy_spec, override, line):
    cfg = OmegaConf.merge(toy_cfg, OmegaConf.from_dotlist([override]))
    if line is None:
        validate_config(cfg, toy_spec, SRC)
    else:
        assert problems(cfg, toy_spec) == [f"{SRC}: {line}"]


def test_missing_required_keys(toy_cfg, toy_spec):
    assert problems(
        toy_cfg, toy_spec, ["~output_dir", "~log_dir", "~checkpointer.checkpoint_dir"]
    ) == [
        "toy.yaml: key 'checkpointer.checkpoint_dir' is required but not set",
        "toy.yaml: key 'output_dir' is required but not set: where results go",
    ]


def test_every_problem_is_reported_at_once(toy_cfg, toy_spec):
    lines = problems(toy_cfg, toy_spec, ["batch_sise=1", "epochs=x", "optimizer.lrr=1"])
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "key 'batch_sise' is unknown (did you mean 'batch_size'?); recipe 'toy' reads",
        "key 'epochs'",
        "key 'optimizer.lrr'",
    ]


def test_positional_runtime_arguments_are_accounted_for(toy_cfg):
    positional = RecipeSpec("p", "", {"optimizer": ConfigKey(component=True, positional=1)})
    validate_config(OmegaConf.create({"optimizer": toy_cfg.optimizer}), positional)
    none_passed = RecipeSpec("p", "", {"optimizer": ConfigKey(component=True)})
    with pytest.raises(ConfigError) as e:
        validate_config(OmegaConf.create({"optimizer": toy_cfg.optimizer}), none_passed, SRC)
    assert str(e.value) == (
        "toy.yaml: key 'optimizer': its keys do not fit torch.optim.AdamW: "
        "missing a required argument: 'params'"
    )


def test_config_key_clashing_with_a_runtime_argument(toy_cfg, toy_spec):
    [line] = problems(toy_cfg, toy_spec, ["optimizer.params=[1]"])
    assert line == (
        "toy.yaml: key 'optimizer': its keys do not fit torch.optim.AdamW (after the 1 "
        "positional argument(s) the recipe passes): multiple values for argument 'params'"
    )


def test_components_under_plain_keys_are_checked_too(toy_cfg):
    spec = RecipeSpec("p", "", {"loggers": ConfigKey(list)})
    cfg = OmegaConf.create(
        {"loggers": [{"_component_": "torch.nn.Identity"}, {"_component_": "torch.nn.Idnetity"}]}
    )
    with pytest.raises(
        ConfigError, match=r"key 'loggers\[1\]._component_': cannot import 'torch.nn.Idnetity'"
    ):
        validate_config(cfg, spec)


def test_component_accepting_kwargs_takes_any_key():
    spec = RecipeSpec("p", "", {"d": ConfigKey(component=True)})
    validate_config(OmegaConf.create({"d": {"_component_": "builtins.dict", "anything": 1}}), spec)


def test_broken_interpolation_names_the_key(toy_cfg, toy_spec):
    cfg = OmegaConf.merge(toy_cfg, {"log_dir": "${outptu_dir}/logs"})
    with pytest.raises(ConfigError, match=r"^toy.yaml: key 'log_dir': .*outptu_dir"):
        validate_config(cfg, toy_spec, SRC)


def test_mandatory_missing_value_is_reported(toy_cfg, toy_spec):
    cfg = toy_cfg.copy()
    cfg.output_dir = "???"  # OmegaConf's marker for a value the user must supply
    with pytest.raises(ConfigError, match=r"^toy.yaml: key 'output_dir': Missing mandatory value"):
        validate_config(cfg, toy_spec, SRC)


def test_config_key_rejects_inconsistent_declarations():
    with pytest.raises(ValueError, match="positional only applies to component=True"):
        ConfigKey(int, positional=1)
    with pytest.raises(ValueError, match="positional must be >= 0, got -1"):
        ConfigKey(component=True, positional=-1)
    with pytest.raises(ValueError, match="do not declare keys="):
        ConfigKey(component=True, keys={})
