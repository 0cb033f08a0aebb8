"""Every config torchtune 0.6.1 ships, given to `tt validate` with its torchtune recipe name.

A config whose recipe and model tt has validates unchanged (it names files under /tmp and a
CUDA device, so the machine checks are skipped: ``--skip-environment``). The others fail with
one line saying what tt lacks, and nothing else.
"""

from __future__ import annotations

import collections

import pytest
from torchtune_wheel import shipped_configs
from tt_cli.main import main

# What tt lacks, as `tt validate` says it: the only reasons a torchtune config may fail.
MISSING = {
    "recipe": "tt has no recipe ",
    "vision evaluation": "image tasks",
}


def _validate(config, capsys) -> tuple[int, str]:
    code = main(["validate", str(config.path), "--recipe", config.recipe, "--skip-environment"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_shipped_config_validates_or_names_what_tt_lacks(torchtune_configs, capsys):
    outcomes: dict[str, list[str]] = collections.defaultdict(list)
    unexpected = []
    for config in torchtune_configs:
        code, output = _validate(config, capsys)
        if code == 0:
            assert "as a torchtune config" in output, output  # says what it rewrote
            outcomes["validates"].append(config.name)
            continue
        errors = [line for line in output.splitlines() if line.startswith("tt: error:")]
        reasons = [what for what, text in MISSING.items() if text in output]
        if code != 2 or len(reasons) != 1 or len(errors) != 1:
            unexpected.append(f"{config.recipe} {config.name} (exit {code}):\n{output}")
        else:
            outcomes[reasons[0]].append(config.name)
    summary = {what: len(names) for what, names in outcomes.items()}
    print(f"{len(torchtune_configs)} torchtune configs: {summary}")
    assert not unexpected, "\n\n".join(unexpected)
    # The counts of this tt: a change that loses a config fails here (update when tt gains a
    # recipe or a capability). Of the 11 Llama 3.2 Vision configs, 10 validate; the 11th
    # evaluates on lm-eval's image tasks.
    assert summary == {"validates": 146, "vision evaluation": 1, "recipe": 8}
    assert len(shipped_configs()[1]) == 1  # dev/7B_full_early_exit.yaml is not in the wheel


@pytest.mark.parametrize(
    "recipe",
    ["qat_lora_finetune_distributed", "dev/generate_v2_distributed"],
)
def test_a_torchtune_recipe_tt_lacks_is_named_without_a_misleading_suggestion(recipe, capsys):
    config = next(c for c in shipped_configs()[0] if c.recipe == recipe)
    code, output = _validate(config, capsys)
    assert code == 2
    assert f"tt has no recipe '{recipe}' yet" in output
    assert "did you mean" not in output


def test_torchtune_config_names_resolve_to_the_tt_config_of_the_same_recipe(torchtune_configs):
    """`tt cp/validate/run --config llama3_2/1B_lora_single_device` (a name from torchtune's
    docs) finds tt's config for the same model, method and recipe."""
    from tt_recipes import registry

    recipes = {c.name: c.recipe for c in torchtune_configs}
    for torchtune_name, tt_name in registry.TORCHTUNE_CONFIGS.items():
        assert torchtune_name in recipes, f"{torchtune_name} is not a torchtune 0.6.1 config"
        tt_recipe = registry.TORCHTUNE_ALIASES[recipes[torchtune_name]]
        assert registry.resolve_config(torchtune_name) == (
            registry.bundled_config_path(tt_name),
            tt_recipe,
        )
    # torchtune names that are tt's names too need no entry
    assert "llama3_2/1B_lora" in recipes and "llama3_2/1B_lora" in registry.CONFIGS
