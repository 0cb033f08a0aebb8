"""``_component_`` mappings: resolving their dotted paths and instantiating them."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tt_recipes.config._errors import ConfigError, closest, did_you_mean

COMPONENT_KEY = "_component_"


def is_component(node: Any) -> bool:
    """True for a mapping that names a callable under ``_component_``."""
    return isinstance(node, (Mapping, DictConfig)) and COMPONENT_KEY in node


def resolve_component(path: str, where: str = "") -> Callable[..., Any]:
    """Import the callable ``path`` names (``"torch.optim.AdamW"``).

    Raises:
        ConfigError: naming ``where`` (file and key), the module that failed and the
            closest existing name.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise ConfigError(
            f"{prefix}{COMPONENT_KEY} must be a dotted path like 'torch.optim.AdamW', got {path!r}"
        )
    parts = path.split(".")
    obj, n_module_parts = _import_longest_prefix(parts, prefix)
    for i in range(n_module_parts, len(parts)):
        if not hasattr(obj, parts[i]):
            owner = ".".join(parts[:i])
            match = closest(parts[i], _names_in(obj))
            hint = f" (did you mean '{owner}.{match}'?)" if match else ""
            raise ConfigError(
                f"{prefix}cannot import {path!r}: {owner!r} has no attribute {parts[i]!r}{hint}"
            )
        obj = getattr(obj, parts[i])
    if not callable(obj):
        raise ConfigError(f"{prefix}{path!r} is a {type(obj).__name__}, not a callable")
    return obj


def _import_longest_prefix(parts: list[str], prefix: str) -> tuple[Any, int]:
    """Import the longest importable module prefix of ``parts``; return it and its length."""
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        try:
            return importlib.import_module(name), n
        except ModuleNotFoundError as e:
            # A missing module *inside* an existing one is a broken install, not a typo.
            if e.name is not None and not name.startswith(e.name):
                raise ConfigError(
                    f"{prefix}importing {name!r} failed: {e} (install the package that "
                    f"provides {e.name!r})"
                ) from e
        except ImportError as e:
            raise ConfigError(f"{prefix}importing {name!r} failed: {e}") from e
    top_level = (m.name for m in pkgutil.iter_modules())
    raise ConfigError(
        f"{prefix}cannot import {'.'.join(parts)!r}: no module named {parts[0]!r}"
        f"{did_you_mean(parts[0], top_level)}"
    )


def _names_in(obj: Any) -> list[str]:
    names = [n for n in dir(obj) if not n.startswith("_")]
    if hasattr(obj, "__path__"):  # a package: its submodules may not be imported yet
        names += [m.name for m in pkgutil.iter_modules(obj.__path__)]
    return names


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the ``_component_`` of ``node`` with its other keys, nested components first.

    ``args`` and ``kwargs`` are runtime objects the recipe passes (they override config
    keys of the same name). Interpolations are resolved; a None node returns None.

    Example::

        optimizer = instantiate(cfg.optimizer, model.parameters())
    """
    if node is None:
        return None
    if isinstance(node, DictConfig):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot resolve the config: {e}") from e
    if not is_component(node):
        raise ConfigError(
            f"instantiate() needs a mapping with a {COMPONENT_KEY!r} key, got {node!r}"
        )
    return _build(dict(node), args, kwargs)


def _build(node: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    target = resolve_component(node[COMPONENT_KEY])
    params = {k: _build_nested(v) for k, v in node.items() if k != COMPONENT_KEY}
    params.update(kwargs)
    return target(*args, **params)


def _build_nested(value: Any) -> Any:
    if is_component(value):
        return _build(dict(value), (), {})
    if isinstance(value, Mapping):
        return {k: _build_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_build_nested(v) for v in value]
    return value
