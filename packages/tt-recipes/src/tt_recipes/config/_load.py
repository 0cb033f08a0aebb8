"""Reading YAML configs and applying command-line overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from tt_recipes import assets  # noqa: F401  (registers the ${tt_asset:NAME} interpolation)
from tt_recipes.config._components import COMPONENT_KEY, is_component
from tt_recipes.config._errors import ConfigError, did_you_mean
from tt_recipes.config._spec import RecipeSpec

OVERRIDE_FORMS = (
    "key.sub=value (typed by YAML: 3, 1e-4, true, null, [1, 2]), "
    "key=dotted.path (sets the component of a _component_ key), ~key (deletes the key)"
)


def load_yaml(path: str | Path) -> DictConfig:
    """Read a YAML config file (a mapping at the top level; ``${...}`` interpolation kept)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        cfg = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got a list")
    return cfg


def apply_overrides(
    cfg: DictConfig, overrides: Sequence[str], spec: RecipeSpec | None = None
) -> DictConfig:
    """Return a copy of ``cfg`` with command-line ``overrides`` applied in order.

    Forms: ``key.sub=value`` sets a value parsed as YAML; ``key=dotted.path`` on a
    ``_component_`` mapping (or a key ``spec`` declares as a component) sets its component
    and keeps its other keys; ``~key`` deletes a key.
    """
    cfg = cfg.copy()
    for text in overrides:
        if text.startswith("~"):
            _delete(cfg, text[1:], text)
        elif "=" in text:
            key, raw = text.split("=", 1)
            _set(cfg, _check_key(key, text), _parse_value(raw, text), spec, text)
        else:
            raise ConfigError(f"override {text!r} is not understood; valid forms: {OVERRIDE_FORMS}")
    return cfg


def _check_key(key: str, text: str) -> str:
    if not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key path; valid forms: {OVERRIDE_FORMS}")
    return key


def _parse_value(raw: str, text: str) -> Any:
    try:
        # OmegaConf's YAML loader types `1e-4` as a float, unlike plain YAML 1.1.
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]
    except (YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML: {e}") from e


def _set(cfg: DictConfig, key: str, value: Any, spec: RecipeSpec | None, text: str) -> None:
    _check_parents_are_mappings(cfg, key, text)
    if isinstance(value, str):
        current = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if is_component(current):
            key = f"{key}.{COMPONENT_KEY}"
        elif current is None and _declared_component(spec, key):
            value = {COMPONENT_KEY: value}
    try:
        OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"override {text!r} cannot be applied: {e}") from e


def _check_parents_are_mappings(cfg: DictConfig, key: str, text: str) -> None:
    # OmegaConf would silently replace a scalar by a mapping to hold the new key.
    parts = key.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False)
        if node is not None and not isinstance(node, DictConfig):
            raise ConfigError(
                f"override {text!r}: {parent!r} holds {node}, not a mapping, "
                f"so it has no key {parts[i]!r}"
            )


def _declared_component(spec: RecipeSpec | None, key: str) -> bool:
    declared = spec.keys.get(key) if spec is not None else None
    return declared is not None and declared.component


def _delete(cfg: DictConfig, key: str, text: str) -> None:
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        dot = "." if parent_path else ""
        siblings = (
            [f"{parent_path}{dot}{k}" for k in parent] if isinstance(parent, DictConfig) else []
        )
        raise ConfigError(
            f"override {text!r}: there is no key {key!r} to delete{did_you_mean(key, siblings)}"
        )
    del parent[leaf]
