"""Checking a config against a recipe's declared keys and its components' signatures.

Runs before any weights or data load: every problem found is reported at once, each on its
own line naming the file, the key path and, where one is close, the name that was meant.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tt_recipes.config._components import COMPONENT_KEY, is_component, resolve_component
from tt_recipes.config._errors import ConfigError, did_you_mean
from tt_recipes.config._load import apply_overrides, load_yaml
from tt_recipes.config._spec import ConfigKey, RecipeSpec
from tt_recipes.config._torchtune import from_torchtune, is_torchtune_config
from tt_recipes.config._types import matches, type_name

log = logging.getLogger("tt")

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_RUNTIME = object()  # stands in for the positional objects the recipe passes at run time


def prepare_config(
    spec: RecipeSpec,
    path: str | Path,
    overrides: Sequence[str] = (),
    source: str | None = None,
    *,
    resolve_components: bool = True,
) -> DictConfig:
    """Load ``path``, apply ``overrides``, validate against ``spec`` and fill defaults.

    ``source`` names the config in messages (default: the path). ``resolve_components=False``
    checks keys, types and values without importing any ``_component_`` (fast: no torch).
    """
    cfg = apply_overrides(load_yaml(path), overrides, spec)
    if is_torchtune_config(cfg):
        cfg, notes = from_torchtune(cfg, spec.keys, source or str(path))
        if resolve_components:  # the final check of a run (the first, fast one stays quiet)
            log.info(f"Read {source or path} as a torchtune config: " + "; ".join(notes))
    return validate_config(cfg, spec, source or str(path), resolve_components=resolve_components)


def validate_config(
    cfg: DictConfig,
    spec: RecipeSpec,
    source: str = "config",
    *,
    resolve_components: bool = True,
) -> DictConfig:
    """Check ``cfg`` against ``spec``; return a copy with absent optional keys set to defaults.

    Raises:
        ConfigError: listing every unknown key (with a suggestion), missing required key,
            value of the wrong type or out of range, unimportable ``_component_`` and
            argument that does not bind to its component's signature.
    """
    values = _resolved(cfg, source)
    problems: list[str] = []
    checker = _Checker(problems, resolve_components)
    checker.section(values, spec.keys, "", f"recipe '{spec.name}'")
    if resolve_components and not problems:
        with_defaults = {name: key.default for name, key in spec.keys.items()} | values
        for check in spec.checks:
            problems.extend(check(with_defaults))
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    filled = cfg.copy()
    _fill_defaults(filled, spec.keys)
    return filled


def _resolved(cfg: DictConfig, source: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: key '{key}': {getattr(e, 'msg', e)}") from e


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Checker:
    """Collects every problem of a config; with ``resolve`` False no component is imported."""

    def __init__(self, problems: list[str], resolve: bool) -> None:
        self.problems = problems
        self.resolve = resolve

    def section(
        self, values: Mapping[str, Any], keys: Mapping[str, ConfigKey], path: str, reader: str
    ) -> None:
        known = [_join(path, name) for name in keys]
        for name, value in values.items():
            key_path = _join(path, name)
            if name in keys:
                self.value(value, keys[name], key_path)
            else:
                self.problems.append(
                    f"key '{key_path}' is unknown{did_you_mean(key_path, known)}; "
                    f"{reader} reads: {', '.join(keys) or 'no keys'}"
                )
        for name, key in keys.items():
            if key.required and values.get(name) is None:
                doc = f": {key.doc}" if key.doc else ""
                self.problems.append(f"key '{_join(path, name)}' is required but not set{doc}")

    def value(self, value: Any, key: ConfigKey, path: str) -> None:
        if value is None:
            return  # whether it may be null is the section's required-key check
        if key.component:
            if is_component(value):
                self.component(value, path, key)
            elif isinstance(value, list) and value and all(is_component(v) for v in value):
                # A list of components (e.g. several datasets, concatenated by the recipe).
                for i, item in enumerate(value):
                    self.component(item, f"{path}[{i}]", key)
            else:
                self.problems.append(
                    f"key '{path}': expected a mapping with a '{COMPONENT_KEY}' key, got {value!r}"
                )
        elif key.type is not None and matches(value, key.type) is False:
            self.problems.append(_wrong_type(path, key.type, value))
        elif key.value_problem(value) is not None:
            self.problems.append(f"key '{path}': {key.value_problem(value)}")
        elif key.keys is not None:
            if isinstance(value, dict):
                self.section(value, key.keys, path, f"section '{path}'")
            else:
                self.problems.append(
                    f"key '{path}': expected a mapping with keys {', '.join(key.keys)}, "
                    f"got {value!r}"
                )
        else:
            self.nested_components(value, path)

    def nested_components(self, value: Any, path: str) -> None:
        if is_component(value):
            self.component(value, path, ConfigKey(component=True))
        elif isinstance(value, dict):
            for name, item in value.items():
                self.nested_components(item, _join(path, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.nested_components(item, f"{path}[{i}]")

    def component(self, node: Mapping[str, Any], path: str, key: ConfigKey) -> None:
        dotted = node[COMPONENT_KEY]
        kwargs = {k: v for k, v in node.items() if k != COMPONENT_KEY}
        for name, arg in (key.args or {}).items():
            if kwargs.get(name) is not None:
                self.value(kwargs[name], arg, _join(path, name))
        if not self.resolve:
            if not isinstance(dotted, str) or not dotted:
                self.problems.append(
                    f"key '{path}.{COMPONENT_KEY}': expected a dotted path like "
                    f"'torch.optim.AdamW', got {dotted!r}"
                )
            for name, value in kwargs.items():
                self.nested_components(value, _join(path, name))
            return
        try:
            target = resolve_component(dotted, where=f"key '{path}.{COMPONENT_KEY}'")
        except ConfigError as e:
            self.problems.append(str(e))
            return
        signature = _signature(target)
        if signature is not None:
            self.problems.extend(_binding_problems(signature, kwargs, key.positional, path, dotted))
        for name, value in kwargs.items():
            param = signature.parameters.get(name) if signature is not None else None
            annotation = param.annotation if param is not None else None
            if not is_component(value) and matches(value, annotation) is False:
                self.problems.append(_wrong_type(_join(path, name), annotation, value, dotted))
            else:
                self.nested_components(value, _join(path, name))


def _wrong_type(path: str, annotation: Any, value: Any, component: str = "") -> str:
    verb = f"{component} expects" if component else "expected"
    return f"key '{path}': {verb} {type_name(annotation)}, got {type(value).__name__} {value!r}"


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target, eval_str=True)
    except Exception:  # an annotation naming something not importable here: check names only
        try:
            return inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have no introspectable signature
            return None


def _binding_problems(
    signature: inspect.Signature,
    kwargs: Mapping[str, Any],
    positional: int,
    path: str,
    dotted: str,
) -> list[str]:
    params = signature.parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        names = [p.name for p in params if p.kind in _KEYWORD_KINDS]
        unknown = [
            f"key '{_join(path, arg)}': {dotted} takes no argument '{arg}'"
            f"{did_you_mean(arg, names)}; it takes: {', '.join(names) or 'no keyword arguments'}"
            for arg in kwargs
            if arg not in names
        ]
        if unknown:
            return unknown
    try:
        signature.bind(*([_RUNTIME] * positional), **kwargs)
    except TypeError as e:
        passed = f" (after the {positional} positional argument(s) the recipe passes)"
        return [f"key '{path}': its keys do not fit {dotted}{passed if positional else ''}: {e}"]
    return []


def _fill_defaults(cfg: DictConfig, keys: Mapping[str, ConfigKey]) -> None:
    for name, key in keys.items():
        if name not in cfg:
            cfg[name] = copy.deepcopy(key.default)
        elif key.keys is not None and isinstance(cfg[name], DictConfig):
            _fill_defaults(cfg[name], key.keys)
