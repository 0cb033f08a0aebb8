"""Checking a YAML value against a simple annotation (int/float/bool/str/list/dict/Optional).

Only annotations a YAML value can be compared with are checked; anything else (a Tensor, a
module, a class the config builds with ``_component_``) is accepted, since the call itself
will judge it.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def matches(value: Any, annotation: Any) -> bool | None:
    """True if ``value`` fits ``annotation``, False if it does not, None if it cannot tell."""
    if annotation in (None, Any, inspect.Parameter.empty) or isinstance(annotation, str):
        return None
    if annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        results = [matches(value, arg) for arg in typing.get_args(annotation)]
        if True in results:
            return True
        return None if None in results else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    return _matches_plain(value, origin or annotation)


def _matches_plain(value: Any, cls: Any) -> bool | None:
    # bool is a subclass of int in Python, but `epochs: true` is surely a mistake.
    if cls is bool:
        return isinstance(value, bool)
    if cls is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if cls is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if cls is str:
        return isinstance(value, str)
    if cls in _SEQUENCES:
        return isinstance(value, (list, tuple))
    if cls in _MAPPINGS:
        return isinstance(value, dict)
    return None


def type_name(annotation: Any) -> str:
    """A short readable name for an annotation: ``int``, ``float | None``, ``list[str]``."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def parse_type_name(name: str) -> Any:
    """The annotation ``type_name`` wrote for the plain types and unions of them (``int``,
    ``float | None``, ``list | str``); None (check nothing) for any other annotation."""
    parts = [part.strip() for part in name.split("|")]
    if any(part not in _NAMES and part != "None" for part in parts):
        return None
    types_ = [type(None) if part == "None" else _NAMES[part] for part in parts]
    result = types_[0]
    for extra in types_[1:]:
        result = result | extra
    return result
