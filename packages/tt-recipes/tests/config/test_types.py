"""matches(): YAML values against simple annotations; type_name() for messages."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pytest
import torch
from tt_recipes.config._types import matches, type_name


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (3, int, True),
        (True, int, False),  # YAML `true` is not a count
        (3.5, int, False),
        (3, float, True),
        (False, bool, True),
        (1, bool, False),
        ("x", str, True),
        (3, str, False),
        ([1], list, True),
        ([1], list[int], True),
        ([0.9, 0.95], tuple[float, float], True),
        ("ab", list, False),
        ({"a": 1}, dict[str, int], True),
        (None, Optional[int], True),
        (2, Optional[int], True),
        ("2", Optional[int], False),
        ("2", int | None, False),
        (0.1, Union[float, torch.Tensor], True),
        ("x", Union[float, torch.Tensor], None),  # a Tensor member: cannot tell from YAML
        ("bf16", Literal["fp32", "bf16"], True),
        ("fp16", Literal["fp32", "bf16"], False),
        ("x", torch.nn.Module, None),
        ("x", Any, None),
        ("x", "int", None),  # unevaluated string annotation
    ],
)
def test_matches(value, annotation, expected):
    assert matches(value, annotation) is expected


@pytest.mark.parametrize(
    ("annotation", "name"),
    [
        (int, "int"),
        (Optional[int], "int | None"),
        (float | None, "float | None"),
        (list[str], "list[str]"),
    ],
)
def test_type_name(annotation, name):
    assert type_name(annotation) == name
