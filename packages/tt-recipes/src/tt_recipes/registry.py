"""Where the recipes and bundled configs are, and torchtune's recipe names as aliases.

A recipe is a module defining ``SPEC = RecipeSpec(...)`` and ``recipe_main(cfg) -> None``;
listed in :data:`RECIPES` by import path, or loaded from a ``.py`` file the user names.
Bundled configs are YAML files under ``tt_recipes/configs/<group>/<name>.yaml``, named
``group/name`` and registered in :data:`CONFIGS` with the recipe they are for, so
``tt validate group/name`` knows which recipe's keys to check against.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tt_recipes.config import ConfigError, RecipeSpec, prepare_config
from tt_recipes.config._errors import did_you_mean

# Recipe name -> module. Modules not written yet are skipped, not errors.
RECIPES: dict[str, str] = {
    "full_finetune": "tt_recipes.recipes.full_finetune",
    "lora_finetune": "tt_recipes.recipes.lora_finetune",
    "dpo": "tt_recipes.recipes.dpo",
    "knowledge_distillation": "tt_recipes.recipes.knowledge_distillation",
    "generate": "tt_recipes.recipes.generate",
    "evaluate": "tt_recipes.recipes.evaluate",
    "quantize": "tt_recipes.recipes.quantize",
    "qat_finetune": "tt_recipes.recipes.qat_finetune",
    "grpo": "tt_recipes.recipes.grpo",
    "reward_model": "tt_recipes.recipes.reward_model",
    "ppo": "tt_recipes.recipes.ppo",
}

# torchtune recipe name -> tt recipe: tt's recipes run on one device or many.
TORCHTUNE_ALIASES: dict[str, str] = {
    "full_finetune_single_device": "full_finetune",
    "full_finetune_distributed": "full_finetune",
    "lora_finetune_single_device": "lora_finetune",
    "lora_finetune_distributed": "lora_finetune",
    "qlora_finetune_single_device": "lora_finetune",
    "qlora_finetune_distributed": "lora_finetune",
    "lora_dpo_single_device": "dpo",
    "lora_dpo_distributed": "dpo",
    "full_dpo_distributed": "dpo",
    "knowledge_distillation_single_device": "knowledge_distillation",
    "knowledge_distillation_distributed": "knowledge_distillation",
    "dev/generate_v2": "generate",
    "eleuther_eval": "evaluate",
    "qat_distributed": "qat_finetune",
    "qat_single_device": "qat_finetune",
    "dev/grpo_full_finetune_distributed": "grpo",
    "ppo_full_finetune_single_device": "ppo",
}

# torchtune recipes tt does not have, and what to use meanwhile.
TORCHTUNE_MISSING: dict[str, str] = {
    "qat_lora_finetune_distributed": "LoRA with quantization-aware training; qat_finetune "
    "trains every weight",
    "dev/generate_v2_distributed": "tensor-parallel generation; generate runs on one device",
    "dev/early_exit_finetune_distributed": "layer dropout with early-exit loss",
    "dev/lora_finetune_distributed_multi_dataset": "a vision multi-dataset recipe; "
    "lora_finetune takes a list of text datasets",
}

# Bundled config name ("group/name") -> the recipe it is for.
CONFIGS: dict[str, str] = {
    "tiny/full": "full_finetune",
    "tiny/lora": "lora_finetune",
    "tiny/dpo": "dpo",
    "tiny/kd": "knowledge_distillation",
    "tiny/generate": "generate",
    "tiny/eval": "evaluate",
    "tiny/quantize": "quantize",
    "tiny/qat": "qat_finetune",
    "tiny/grpo": "grpo",
    "tiny/reward_model": "reward_model",
    "tiny/ppo": "ppo",
    "tiny/vision": "full_finetune",
    "tiny/generate_vision": "generate",
    # Real models: weights from `tt download <repo>` (each file's header names the repo).
    "llama3_2/1B_full": "full_finetune",
    "llama3_2/1B_lora": "lora_finetune",
    "llama3_2/1B_qlora": "lora_finetune",
    "llama3_2/1B_lora_dpo": "dpo",
    "llama3_2/1B_eval": "evaluate",
    "llama3_2/1B_grpo": "grpo",
    "llama3_2/1B_reward_model": "reward_model",
    "llama3_2/1B_ppo": "ppo",
    "qwen2_5/0.5B_grpo": "grpo",
    "llama3_1/8B_lora": "lora_finetune",
    "qwen2_5/0.5B_full": "full_finetune",
    "qwen2_5/0.5B_lora": "lora_finetune",
    "qwen3/0.6B_full": "full_finetune",
    "qwen3/0.6B_lora": "lora_finetune",
    "mistral/7B_full": "full_finetune",
    "mistral/7B_lora": "lora_finetune",
    "gemma/2B_full": "full_finetune",
    "gemma/2B_lora": "lora_finetune",
    "gemma2/2B_full": "full_finetune",
    "gemma2/2B_lora": "lora_finetune",
    "gemma3/1B_full": "full_finetune",
    "gemma3/1B_lora": "lora_finetune",
    "qwen3_moe/30B_A3B_lora": "lora_finetune",
    "mixtral/8x7B_qlora": "lora_finetune",
    "llama3_2_vision/11B_lora": "lora_finetune",
    "llama3_2_vision/11B_qlora": "lora_finetune",
    "llama3_2_vision/11B_full": "full_finetune",
    "llama3_2_vision/90B_qlora": "lora_finetune",
    "phi3/mini_full": "full_finetune",
    "phi3/mini_lora": "lora_finetune",
    "smollm2/135M_full": "full_finetune",
    "smollm2/135M_lora": "lora_finetune",
}

# torchtune 0.6.1's config names whose tt config (same model, method and data) is bundled
# under another name; a torchtune name equal to a tt name needs no entry. tt's recipes run on
# one device or many, so torchtune's _single_device and distributed configs are one tt config.
TORCHTUNE_CONFIGS: dict[str, str] = {
    "llama3_2/1B_full_single_device": "llama3_2/1B_full",
    "qwen2_5/0.5B_full_single_device": "qwen2_5/0.5B_full",
    "llama3_1/8B_lora_single_device": "llama3_1/8B_lora",
    "llama3_2/1B_lora_single_device": "llama3_2/1B_lora",
    "llama3_2/1B_qlora_single_device": "llama3_2/1B_qlora",
    "mistral/7B_lora_single_device": "mistral/7B_lora",
    "gemma/2B_lora_single_device": "gemma/2B_lora",
    "gemma2/2B_lora_single_device": "gemma2/2B_lora",
    "phi3/mini_lora_single_device": "phi3/mini_lora",
    "qwen2_5/0.5B_lora_single_device": "qwen2_5/0.5B_lora",
}

CONFIG_DIR = Path(__file__).parent / "configs"
# The built-in recipes' specs as data, so a config can be checked (unknown keys, types, value
# ranges) before any recipe module, and so torch, is imported: a typo answers at once.
# Written by `python -m tt_recipes.registry`; a test checks it equals the recipes' own SPECs.
SPEC_SNAPSHOT = Path(__file__).parent / "recipes" / "specs.json"


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: its declared spec, its entry point and where it came from."""

    spec: RecipeSpec
    main: Callable[[DictConfig], None]
    source: str


def available_recipes() -> list[str]:
    """Names of the registered recipes whose modules exist in this install."""
    return [name for name, module in RECIPES.items() if _module_exists(module)]


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is not there either
        return False


def aliases_of(name: str) -> list[str]:
    """The torchtune names that map to recipe ``name``."""
    return [alias for alias, target in TORCHTUNE_ALIASES.items() if target == name]


def load_recipe(name_or_path: str) -> Recipe:
    """Import a recipe by name, torchtune alias, ``SPEC.aliases`` entry or ``.py`` file path."""
    if name_or_path.endswith(".py"):
        return _load_recipe_file(Path(name_or_path))
    names = available_recipes()
    name = TORCHTUNE_ALIASES.get(name_or_path, name_or_path)
    if name in names:
        return _recipe_from_module(importlib.import_module(RECIPES[name]), RECIPES[name])
    for candidate in names:
        recipe = load_recipe(candidate)
        if name_or_path in recipe.spec.aliases:
            return recipe
    if name_or_path in TORCHTUNE_MISSING:
        raise ConfigError(
            f"tt has no recipe {name_or_path!r} yet (torchtune's {TORCHTUNE_MISSING[name_or_path]})"
        )
    known = names + [a for a, target in TORCHTUNE_ALIASES.items() if target in names]
    raise ConfigError(
        f"unknown recipe {name_or_path!r}{did_you_mean(name_or_path, known)}; available "
        f"recipes: {', '.join(names) or 'none installed'} (or a path to a recipe .py file)"
    )


def load_run(
    recipe_ref: str,
    config_ref: str,
    overrides: Sequence[str] = (),
    *,
    check_environment: bool = True,
) -> tuple[Recipe, DictConfig, Path]:
    """The recipe and its checked config, every problem reported before anything heavy loads.

    First the config's keys, types and values are checked against the recipe's spec snapshot
    (nothing imported); then the recipe is imported and every ``_component_`` resolved and
    bound to its signature; last, paths the config names (checkpoints, tokenizers, data
    files) must exist and a CUDA device must be present when one is asked for (unless
    ``check_environment`` is False: a config checked here for another machine).

    Raises:
        ConfigError: naming the file, the key and what would be valid.
    """
    path, _ = resolve_config(config_ref)
    snapshot = snapshot_spec(recipe_ref)
    if snapshot is not None:
        prepare_config(snapshot, path, overrides, source=config_ref, resolve_components=False)
    recipe = load_recipe(recipe_ref)
    cfg = prepare_config(recipe.spec, path, overrides, source=config_ref)
    values = OmegaConf.to_container(cfg, resolve=True)
    problems = environment_problems(values) if check_environment else []
    if problems:
        raise ConfigError("\n".join(f"{config_ref}: {problem}" for problem in problems))
    return recipe, cfg, path


# Keys whose values name a local file or directory that must exist before a run starts.
_PATH_KEYS = ("checkpoint_dir", "path", "data_files", "include_path")


def environment_problems(values: Mapping[str, Any], where: str = "") -> list[str]:
    """Paths the config names that do not exist; a CUDA device asked for on a machine
    without one."""
    problems = []
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if name in _PATH_KEYS and value is not None:
            items = value.values() if isinstance(value, Mapping) else value
            for item in items if isinstance(items, (list, type({}.values()))) else [items]:
                if isinstance(item, str) and "://" not in item and not Path(item).exists():
                    problems.append(f"key '{key}': {item!r} does not exist{_path_hint(name)}")
        elif isinstance(value, Mapping):
            problems += environment_problems(value, key)
        elif name == "device" and isinstance(value, str) and value.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                problems.append(
                    f"key '{key}': {value!r} needs a CUDA GPU and this machine has none; use "
                    "device=cpu (or auto, which picks a GPU when there is one)"
                )
    return problems


def _path_hint(name: str) -> str:
    if name == "checkpoint_dir":
        return (
            " (a Hugging Face model directory, which `tt download` fetches, or the output_dir "
            "of an earlier tt run)"
        )
    return ""


def snapshot_spec(name_or_path: str) -> RecipeSpec | None:
    """The spec of a built-in recipe (name or alias) from the snapshot, without importing it;
    None for a recipe file or a name the snapshot does not hold."""
    name = TORCHTUNE_ALIASES.get(name_or_path, name_or_path)
    if name_or_path.endswith(".py") or not SPEC_SNAPSHOT.is_file():
        return None
    data = json.loads(SPEC_SNAPSHOT.read_text())
    return RecipeSpec.from_dict(data[name]) if name in data else None


def write_spec_snapshot(path: Path = SPEC_SNAPSHOT) -> dict:
    """Import every built-in recipe and write their specs as data."""
    data = {name: load_recipe(name).spec.to_dict() for name in available_recipes()}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def _load_recipe_file(path: Path) -> Recipe:
    if not path.is_file():
        raise ConfigError(f"recipe file '{path}' does not exist")
    module_name = f"_tt_user_recipe_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"recipe file '{path}' cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    module_spec.loader.exec_module(module)
    return _recipe_from_module(module, str(path))


def _recipe_from_module(module: ModuleType, source: str) -> Recipe:
    spec = getattr(module, "SPEC", None)
    main = getattr(module, "recipe_main", None)
    if not isinstance(spec, RecipeSpec) or not callable(main):
        raise ConfigError(
            f"recipe '{source}' must define SPEC = RecipeSpec(...) and "
            f"def recipe_main(cfg: DictConfig) -> None"
        )
    return Recipe(spec=spec, main=main, source=source)


def bundled_config_path(name: str) -> Path:
    """The file of bundled config ``group/name``."""
    return CONFIG_DIR / f"{name}.yaml"


def config_files() -> list[str]:
    """Names (``group/name``) of every YAML file shipped under ``tt_recipes/configs``."""
    return sorted(
        p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml")
    )


def resolve_config(name_or_path: str) -> tuple[Path, str | None]:
    """Find a config: a bundled name gives its file and recipe; a path gives (path, None)."""
    name = TORCHTUNE_CONFIGS.get(name_or_path, name_or_path)
    if name in CONFIGS:
        return bundled_config_path(name), CONFIGS[name]
    path = Path(name_or_path)
    if path.is_file():
        return path, None
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file '{path}' does not exist")
    raise ConfigError(
        f"{name_or_path!r} is neither a bundled config nor a file"
        f"{did_you_mean(name_or_path, CONFIGS)}; bundled configs: "
        f"{', '.join(sorted(CONFIGS)) or 'none yet'} (`tt ls` lists them); a torchtune YAML "
        "file runs as it is: --config path/to/file.yaml"
    )


def torchtune_names_of(config: str) -> list[str]:
    """torchtune's names for bundled config ``config``."""
    return [name for name, target in TORCHTUNE_CONFIGS.items() if target == config]


if __name__ == "__main__":
    written = write_spec_snapshot()
    print(f"wrote {SPEC_SNAPSHOT} ({len(written)} recipes)")
