"""Deterministic generated arithmetic tasks, so recipes can show learning offline on CPU.

Rows look like ``{"input": "What is 17 + 25?", "output": "42"}``; the text depends only on
``(n, seed, split, max_operand)``. Train and validation draw from separate random streams.
A ~1-5M parameter model learns two-operand sums up to 20 + 20 in a minute or two on CPU.
"""

from __future__ import annotations

import hashlib
import random

import datasets
import torch

from tt_data.datasets.base import (
    PreferenceTransform,
    SFTTransform,
    build_dataset,
)
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.transforms import ChosenRejectedToMessages, InputOutputToMessages

SPLITS = ("train", "validation")


def _rng(seed: int, split: str) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not valid for synthetic data; expected {SPLITS}")
    # str seeds hash with SHA-512, so the stream is the same on every run and platform.
    return random.Random(f"tt-synthetic-arithmetic:{seed}:{split}")


def is_held_out_sum(a: int, b: int) -> bool:
    """The fixed fifth of sums ``a + b`` that held-out splits keep apart from training."""
    return hashlib.sha256(f"{a}+{b}".encode()).digest()[0] % 5 == 0


def split_sums(max_operand: int, split: str, above: int = -1) -> list[tuple[int, int]]:
    """The operand pairs ``(a, b)`` of ``split``, a, b <= max_operand and max(a, b) > above:
    the held-out fifth for "validation", the rest for "train"."""
    return [
        (a, b)
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        if max(a, b) > above and is_held_out_sum(a, b) == (split == "validation")
    ]


def arithmetic_rows(
    n: int,
    seed: int = 0,
    split: str = "train",
    max_operand: int = 20,
    held_out_sums: bool = False,
) -> list[dict[str, str]]:
    """``n`` rows ``{"input": "What is a + b?", "output": str(a + b), "wrong": ...}``.

    ``wrong`` is a deterministic incorrect answer (the rejected side of preference pairs).
    With ``held_out_sums`` the train split never draws the sums `is_held_out_sum` picks and the
    validation split draws only those, so validation measures sums never trained on.
    """
    if n < 1 or max_operand < 1:
        raise ValueError(f"need n >= 1 and max_operand >= 1, got n={n}, max_operand={max_operand}")
    rng = _rng(seed, split)
    pairs = split_sums(max_operand, split) if held_out_sums else None
    rows = []
    for _ in range(n):
        if held_out_sums:
            a, b = rng.choice(pairs)
        else:
            a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        offset = rng.choice([d for d in range(-3, 4) if d != 0 and a + b + d >= 0])
        rows.append(
            {"input": f"What is {a} + {b}?", "output": str(a + b), "wrong": str(a + b + offset)}
        )
    return rows


def synthetic_arithmetic(
    tokenizer: ModelTokenizer,
    *,
    n: int = 1000,
    seed: int = 0,
    split: str = "train",
    max_operand: int = 20,
    packed: bool = False,
    max_seq_len: int | None = None,
) -> torch.utils.data.Dataset:
    """SFT dataset of addition questions; only the answer is trained."""
    rows = datasets.Dataset.from_list(arithmetic_rows(n, seed, split, max_operand))
    sample_fn = SFTTransform(tokenizer, InputOutputToMessages())
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)


def synthetic_arithmetic_preference(
    tokenizer: ModelTokenizer,
    *,
    n: int = 1000,
    seed: int = 0,
    split: str = "train",
    max_operand: int = 20,
    held_out_sums: bool = False,
    packed: bool = False,
    max_seq_len: int | None = None,
) -> torch.utils.data.Dataset:
    """Preference pairs: the correct sum is chosen, a near miss (off by 1-3) is rejected.

    ``held_out_sums``: validation pairs are on sums the train split never draws."""
    rows = arithmetic_rows(n, seed, split, max_operand, held_out_sums)
    pairs = [{"prompt": r["input"], "chosen": r["output"], "rejected": r["wrong"]} for r in rows]
    rows = datasets.Dataset.from_list(pairs)
    sample_fn = PreferenceTransform(tokenizer, ChosenRejectedToMessages())
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)
