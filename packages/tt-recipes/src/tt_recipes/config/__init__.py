"""The config system: YAML + ``_component_`` instantiation, overrides and validation.

A recipe declares the keys it reads in a :class:`RecipeSpec`; :func:`prepare_config` loads a
YAML file, applies command-line overrides and validates it against that spec before any
weights or data load. :class:`ConfigKey` lists what a recipe can declare about a key.
"""

from tt_recipes.config._components import (
    COMPONENT_KEY,
    instantiate,
    is_component,
    resolve_component,
)
from tt_recipes.config._errors import ConfigError
from tt_recipes.config._load import apply_overrides, load_yaml
from tt_recipes.config._spec import (
    DEVICE_KEY,
    DTYPES,
    LOG_LEVEL_KEY,
    TRAINING_DTYPES,
    ConfigKey,
    RecipeSpec,
)
from tt_recipes.config._validate import prepare_config, validate_config

__all__ = [
    "COMPONENT_KEY",
    "DEVICE_KEY",
    "DTYPES",
    "LOG_LEVEL_KEY",
    "TRAINING_DTYPES",
    "ConfigError",
    "ConfigKey",
    "RecipeSpec",
    "apply_overrides",
    "instantiate",
    "is_component",
    "load_yaml",
    "prepare_config",
    "resolve_component",
    "validate_config",
]
