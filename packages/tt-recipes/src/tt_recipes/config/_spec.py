"""What a recipe declares about its config: the keys it reads, their types and defaults."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConfigKey:
    """One config key a recipe reads.

    Args:
        type: annotation the value must match (``int``, ``float``, ``str``, ``bool``,
            ``list``, ``dict``, ``Optional[int]``, ...); None accepts anything.
        default: value filled in when the key is absent (ignored when ``required``).
        required: the config must set the key.
        component: the value is a ``_component_`` mapping the recipe instantiates.
        positional: how many positional arguments the recipe passes when it instantiates
            this component (1 for an optimizer built with ``model.parameters()``); they are
            accounted for when the config's keys are bound to the component's signature.
        keys: sub-keys of a plain section (e.g. ``checkpointer``), declared the same way;
            None lets the section hold any keys.
        doc: one line for ``tt ls RECIPE`` and error messages.
        choices: the values allowed (e.g. ``("fp32", "bf16")``).
        min: the smallest value allowed (a number; ``1`` for a count of steps).
        pattern: a regular expression a string value must match whole (e.g. ``cuda:N``
            devices), checked when the value is not one of ``choices``.
        args: checks on some arguments of a component (e.g. ``{"lr": ConfigKey(float,
            min=0)}`` for an optimizer); the signature still decides which arguments exist.
    """

    type: Any = None
    default: Any = None
    required: bool = False
    component: bool = False
    positional: int = 0
    keys: Mapping[str, ConfigKey] | None = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    pattern: str | None = None
    args: Mapping[str, ConfigKey] | None = None

    def __post_init__(self) -> None:
        if self.positional < 0:
            raise ValueError(f"ConfigKey.positional must be >= 0, got {self.positional}")
        if self.positional and not self.component:
            raise ValueError("ConfigKey.positional only applies to component=True keys")
        if self.component and self.keys is not None:
            raise ValueError(
                "ConfigKey: a component's keys come from its signature; do not declare keys="
                " (args= declares checks on some of them)"
            )
        if self.args is not None and not self.component:
            raise ValueError("ConfigKey.args only applies to component=True keys")

    def value_problem(self, value: Any) -> str | None:
        """What is wrong with a (type-checked, non-null) value, or None."""
        if self.choices is not None and value in self.choices:
            return None
        if self.pattern is not None and isinstance(value, str):
            if re.fullmatch(self.pattern, value):
                return None
        if self.choices is not None or self.pattern is not None:
            valid = [repr(c) for c in self.choices or ()]
            if self.pattern is not None:
                valid.append(f"a string matching {self.pattern!r}")
            return f"{value!r} is not valid; valid: {', '.join(valid)}"
        if self.min is not None and isinstance(value, (int, float)) and value < self.min:
            return f"{value!r} is too small; it must be >= {self.min:g}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """This declaration as plain data (the recipe-spec snapshot, ``specs.json``)."""
        from tt_recipes.config._types import type_name

        out: dict[str, Any] = {
            "type": None if self.type is None else type_name(self.type),
            "default": self.default,
            "required": self.required,
            "component": self.component,
            "positional": self.positional,
            "doc": self.doc,
            "choices": None if self.choices is None else list(self.choices),
            "min": self.min,
            "pattern": self.pattern,
        }
        for name in ("keys", "args"):
            section = getattr(self, name)
            out[name] = None if section is None else {k: v.to_dict() for k, v in section.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigKey:
        from tt_recipes.config._types import parse_type_name

        sections = {
            name: None
            if data[name] is None
            else {k: cls.from_dict(v) for k, v in data[name].items()}
            for name in ("keys", "args")
        }
        return cls(
            type=None if data["type"] is None else parse_type_name(data["type"]),
            default=data["default"],
            required=data["required"],
            component=data["component"],
            positional=data["positional"],
            doc=data["doc"],
            choices=None if data["choices"] is None else tuple(data["choices"]),
            min=data["min"],
            pattern=data["pattern"],
            **sections,
        )


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe's name, one-line description, the top-level keys it reads and its aliases.

    Example::

        SPEC = RecipeSpec(
            name="full_finetune",
            description="Full-parameter fine-tuning on one device or many.",
            keys={
                "output_dir": ConfigKey(str, required=True),
                "epochs": ConfigKey(int, default=1),
                "optimizer": ConfigKey(component=True, required=True, positional=1),
                "checkpointer": ConfigKey(keys={"checkpoint_dir": ConfigKey(str, required=True)}),
            },
        )
    """

    name: str
    description: str
    keys: Mapping[str, ConfigKey] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # Checks across keys, run on the resolved config after the keys' own checks (may import
    # what the config names); each returns problems, "key 'a.b': what is wrong".
    checks: tuple[Callable[[dict[str, Any]], list[str]], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "keys": {name: key.to_dict() for name, key in self.keys.items()},
            "aliases": list(self.aliases),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecipeSpec:
        return cls(
            name=data["name"],
            description=data["description"],
            keys={name: ConfigKey.from_dict(key) for name, key in data["keys"].items()},
            aliases=tuple(data["aliases"]),
        )


# Values every recipe accepts for ``dtype`` and ``device``.
DTYPES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
TRAINING_DTYPES = ("fp32", "bf16", "float32", "bfloat16")  # fp16 training needs loss scaling
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_KEY = ConfigKey(
    str, default="INFO", choices=LOG_LEVELS, doc="tt's log lines at this level and above"
)
DEVICE_KEY = ConfigKey(
    str,
    default="auto",
    choices=("auto", "cpu", "cuda"),
    pattern=r"cuda:\d+",
    doc="auto | cpu | cuda | cuda:N",
)
