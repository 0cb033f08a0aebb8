"""What a recipe declares about its config: the keys it reads, their types and defaults."""

from __future__ import annotations

from collections.abc import Mapping
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
    """

    type: Any = None
    default: Any = None
    required: bool = False
    component: bool = False
    positional: int = 0
    keys: Mapping[str, ConfigKey] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.positional < 0:
            raise ValueError(f"ConfigKey.positional must be >= 0, got {self.positional}")
        if self.positional and not self.component:
            raise ValueError("ConfigKey.positional only applies to component=True keys")
        if self.component and self.keys is not None:
            raise ValueError(
                "ConfigKey: a component's keys come from its signature; do not declare keys="
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
