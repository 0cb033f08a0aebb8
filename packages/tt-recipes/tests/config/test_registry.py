"""The registry: recipe lookup by name/alias/file, bundled configs and their consistency."""

from __future__ import annotations

from pathlib import Path

import pytest
from tt_recipes import registry
from tt_recipes.config import ConfigError, prepare_config

HERE = Path(__file__).parent


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A registry holding the toy recipe, two unwritten ones and one bundled config."""
    monkeypatch.setattr(
        registry,
        "RECIPES",
        {
            "toy": "toy_components",
            "later": "tt_recipes.recipes.not_written_yet",
            "gone": "no_pkg.x",
        },
    )
    monkeypatch.setattr(registry, "TORCHTUNE_ALIASES", {"toy_distributed": "toy"})
    monkeypatch.setattr(registry, "CONFIGS", {"tiny/toy": "toy"})
    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "toy.yaml").write_text((HERE / "toy.yaml").read_text())
    return tmp_path


def test_only_existing_recipe_modules_are_listed(toy_registry):
    assert registry.available_recipes() == ["toy"]


@pytest.mark.parametrize(
    "ref", ["toy", "toy_distributed", "toy_single_device", str(HERE / "toy_components.py")]
)
def test_recipe_by_name_torchtune_alias_spec_alias_or_file(toy_registry, ref):
    recipe = registry.load_recipe(ref)
    assert recipe.spec.name == "toy" and callable(recipe.main)


def test_unknown_recipe_suggests_and_lists(toy_registry):
    with pytest.raises(ConfigError) as e:
        registry.load_recipe("tyo")
    assert str(e.value) == (
        "unknown recipe 'tyo' (did you mean 'toy'?); available recipes: toy "
        "(or a path to a recipe .py file)"
    )


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file '.*missing.py' does not exist"):
        registry.load_recipe(str(tmp_path / "missing.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(
        ConfigError, match=r"empty.py' must define SPEC = RecipeSpec\(...\) and def recipe_main"
    ):
        registry.load_recipe(str(empty))


def test_resolve_config(toy_registry, tmp_path):
    assert registry.resolve_config("tiny/toy") == (toy_registry / "tiny" / "toy.yaml", "toy")
    assert registry.resolve_config(str(HERE / "toy.yaml")) == (HERE / "toy.yaml", None)
    assert registry.config_files() == ["tiny/toy"]
    with pytest.raises(ConfigError, match=r"config file 'nope.yaml' does not exist"):
        registry.resolve_config("nope.yaml")
    with pytest.raises(ConfigError) as e:
        registry.resolve_config("tiny/tyo")
    assert str(e.value) == (
        "'tiny/tyo' is neither a bundled config nor a file (did you mean 'tiny/toy'?); "
        "bundled configs: tiny/toy (`tt ls` lists them); a torchtune YAML file runs as it is: "
        "--config path/to/file.yaml"
    )


def test_torchtune_aliases_point_at_registered_recipes():
    assert set(registry.TORCHTUNE_ALIASES.values()) <= set(registry.RECIPES)
    assert "lora_finetune_distributed" in registry.TORCHTUNE_ALIASES


def test_every_bundled_config_file_is_registered_with_a_recipe():
    assert registry.config_files() == sorted(registry.CONFIGS)
    assert set(registry.CONFIGS.values()) <= set(registry.available_recipes())


def test_every_bundled_config_validates_against_its_recipe():
    for name, recipe_name in registry.CONFIGS.items():
        path, _ = registry.resolve_config(name)
        prepare_config(registry.load_recipe(recipe_name).spec, path, source=name)


def test_bundled_configs_spell_out_every_key_their_recipe_reads() -> None:
    """The config is the user interface: every key a recipe reads is visible in its bundled
    configs. The one exception: ``model`` is unused when ``checkpointer.checkpoint_dir`` names
    a model (the architecture comes from its config.json)."""
    from tt_recipes.config import load_yaml
    from tt_recipes.registry import CONFIGS, bundled_config_path, load_recipe

    for name, recipe in CONFIGS.items():
        cfg = load_yaml(bundled_config_path(name))
        missing = [key for key in load_recipe(recipe).spec.keys if key not in cfg]
        if cfg.get("checkpointer", {}).get("checkpoint_dir"):
            missing = [key for key in missing if key != "model"]
        assert not missing, f"{name} does not show keys {missing}"


def test_the_spec_snapshot_equals_every_recipes_own_spec() -> None:
    """specs.json lets the CLI check a config before importing torch; it must say exactly what
    the recipes declare (regenerate it with `python -m tt_recipes.registry`)."""
    import json

    from tt_recipes import registry

    snapshot = json.loads(registry.SPEC_SNAPSHOT.read_text())
    live = {
        name: registry.load_recipe(name).spec.to_dict() for name in registry.available_recipes()
    }
    assert snapshot == live, "recipes/specs.json is stale: run `python -m tt_recipes.registry`"
    for name in live:  # and it reads back into the same declarations
        assert registry.snapshot_spec(name).to_dict() == live[name]
