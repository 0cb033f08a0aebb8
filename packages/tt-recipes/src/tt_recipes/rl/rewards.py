"""Reward functions and scoring.

A reward function has TRL's signature: ``fn(prompts, completions, **columns) -> list[float |
None]``, one value per completion (None: the function does not apply to that sample; it is
left out of that sample's weighted sum). ``columns`` are the prompt dataset's other columns
(``answer``, ...), one value per completion, plus ``completion_ids`` (the generated token ids).

In a config, ``reward_functions`` lists dotted paths of such functions, or ``_component_``
mappings of factories that return one (``tt_recipes.rl.rewards.format_reward`` with a pattern).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tt_recipes.config import instantiate, resolve_component

RewardFn = Callable[..., Sequence[float | None]]
log = logging.getLogger("tt")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def extract_answer(text: str) -> str | None:
    """The final answer a math completion gives: the last ``\\boxed{...}``, else what follows
    the last ``####`` (GSM8K's solutions), else the last number in the text."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        return boxed[-1].strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def math_answer(prompts: list, completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's final answer equals the reference numerically (or as text
    when either is not a number), else 0.0. ``answer`` may be a GSM8K solution ("... #### 72")
    or the bare answer."""
    rewards = []
    for completion, reference in zip(completions, answer):
        want, got = extract_answer(str(reference)), extract_answer(completion)
        if want is None or got is None:
            rewards.append(0.0)
            continue
        a, b = _to_number(want), _to_number(got)
        same = (
            abs(a - b) <= 1e-6 * max(1.0, abs(a))
            if a is not None and b is not None
            else want == got
        )
        rewards.append(1.0 if same else 0.0)
    return rewards


def arithmetic_answer(
    prompts: list, completions: list[str], answer: list[str], **_: Any
) -> list[float]:
    """The tiny arithmetic task's checker: 1.0 when the whole completion is the sum."""
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def format_reward(pattern: str, reward: float = 1.0, search: bool = False) -> RewardFn:
    """A reward function: ``reward`` for a completion the regular expression ``pattern``
    matches (whole completion, or anywhere with ``search``), else 0.0.

    Example config: ``{_component_: tt_recipes.rl.rewards.format_reward, pattern: "<think>.*</think>.*"}``
    """
    compiled = re.compile(pattern, re.DOTALL)
    match = compiled.search if search else compiled.fullmatch

    def format_match(prompts: list, completions: list[str], **_: Any) -> list[float]:
        return [reward if match(c.strip()) else 0.0 for c in completions]

    format_match.__name__ = "format_reward"
    return format_match


def length_penalty(max_tokens: int, buffer: int) -> RewardFn:
    """A reward function: DAPO's soft overlong punishment. 0 up to ``max_tokens - buffer``
    completion tokens, then falling linearly to -1 at ``max_tokens`` (and beyond)."""
    if buffer < 1 or buffer > max_tokens:
        raise ValueError(
            f"length_penalty: need 1 <= buffer <= max_tokens, got {buffer}, {max_tokens}"
        )

    def overlong(prompts: list, completions: list[str], completion_ids: list, **_: Any) -> list:
        start = max_tokens - buffer
        return [-min(1.0, max(0, len(ids) - start) / buffer) for ids in completion_ids]

    overlong.__name__ = "length_penalty"
    return overlong


# ---------------------------------------------------------------------------------------------
# Scoring


class RewardError(ValueError):
    """A reward function raised or returned something unusable; the message names it."""


@dataclass(frozen=True)
class Scores:
    """Rewards of a batch of completions."""

    total: list[float]  # the weighted sum per completion (functions returning None left out)
    per_function: dict[str, list[float | None]]


def function_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def required_columns(fn: Callable) -> list[str]:
    """The dataset columns a reward function needs: its parameters after ``prompts`` and
    ``completions`` that have no default (``answer`` for ``math_answer``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[2:]
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name != "completion_ids"
    ]


def score(
    functions: Sequence[RewardFn],
    weights: Sequence[float],
    prompts: list,
    completions: list[str],
    columns: Mapping[str, list],
    first_row: int = 0,
) -> Scores:
    """Call every reward function on the batch and sum their rewards with ``weights``.

    Raises:
        RewardError: a function raised (the first sample it fails on is named: it is called
            again row by row to find it), returned a list of the wrong length, or a NaN/inf.
            ``first_row`` numbers the batch's rows in messages.
    """
    per_function: dict[str, list[float | None]] = {}
    for fn in functions:
        name = function_name(fn)
        values = _call(fn, name, prompts, completions, columns, first_row)
        per_function[name] = values
    total = []
    for i in range(len(completions)):
        applied = [
            w * values[i]
            for w, values in zip(weights, per_function.values())
            if values[i] is not None
        ]
        total.append(sum(applied))
    return Scores(total=total, per_function=per_function)


def _call(fn, name, prompts, completions, columns, first_row) -> list[float | None]:
    try:
        values = list(fn(prompts, completions, **columns))
    except Exception as e:
        row = _failing_row(fn, prompts, completions, columns)
        where = (
            f" on sample {first_row + row} (prompt {prompts[row]!r}, completion {completions[row]!r})"
            if row is not None
            else ""
        )
        raise RewardError(f"reward function {name} raised{where}: {type(e).__name__}: {e}") from e
    if len(values) != len(completions):
        raise RewardError(
            f"reward function {name} returned {len(values)} rewards for {len(completions)} "
            "completions; it must return one value (or None) per completion"
        )
    for i, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RewardError(
                f"reward function {name} returned {value!r} for sample {first_row + i} (prompt "
                f"{prompts[i]!r}, completion {completions[i]!r}); rewards must be finite numbers "
                "or None"
            )
    return [None if v is None else float(v) for v in values]


def _failing_row(fn, prompts, completions, columns) -> int | None:
    for i in range(len(completions)):
        try:
            fn(
                prompts[i : i + 1],
                completions[i : i + 1],
                **{k: v[i : i + 1] for k, v in columns.items()},
            )
        except Exception:
            return i
    return None


class RewardFunctions:
    """The config's reward functions with their weights."""

    def __init__(self, functions: list, weights: list[float]) -> None:
        self.functions = functions
        self.weights = weights

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RewardFunctions:
        items = OmegaConf.to_container(cfg.reward_functions, resolve=True)
        functions = [resolve_component(i) if isinstance(i, str) else instantiate(i) for i in items]
        for item, fn in zip(items, functions):
            if not callable(fn):
                raise TypeError(
                    f"reward function {item!r} built a {type(fn).__name__}, not a callable"
                )
        weights = list(cfg.reward_weights) if cfg.reward_weights is not None else [1.0] * len(items)
        names = ", ".join(function_name(f) for f in functions)
        log.info(f"Rewards: {names} (weights {weights})")
        return cls(functions, [float(w) for w in weights])

    def check_columns(self, dataset: Any, key: str) -> None:
        """Every column a reward function reads is in the prompt dataset (first row)."""
        row = dataset[0]
        for fn in self.functions:
            missing = [c for c in required_columns(fn) if c not in row]
            if missing:
                present = sorted(k for k in row if k not in ("prompt_tokens", "row_index"))
                raise ValueError(
                    f"reward function {function_name(fn)} reads the column(s) "
                    f"{missing}, which the {key} rows do not have (they have {present}); map "
                    "one with the dataset's column_map, e.g. column_map: {answer: solution}"
                )

    def score(self, rollouts: Any, first_row: int = 0) -> Scores:
        """Score ``rl.rollout.Rollouts``: its prompt items' columns reach the functions."""
        columns = {
            name: [item[name] for item in rollouts.prompts]
            for name in rollouts.prompts[0]
            if name not in ("prompt_tokens", "prompt", "row_index")
        }
        columns["completion_ids"] = rollouts.completions.tokens
        prompts = [item["prompt"] for item in rollouts.prompts]
        return score(self.functions, self.weights, prompts, rollouts.texts, columns, first_row)
