"""Prompt datasets for online RL (GRPO, PPO): prompts the policy completes, with the columns
its reward functions read.

An item is ``{"prompt_tokens": list[int], "prompt": str, "row_index": int, **other columns}``:
the prompt as the chat template renders it for generation (ending with the assistant header),
the prompt text, its row in the dataset (RL seeds each completion by it), and every other
column of the row unchanged (a reference ``answer``, a task id...).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import torch

from tt_data.datasets.base import (
    DataError,
    TokenizedDataset,
    _check_rows,
    load_rows,
    refuse_images,
)
from tt_data.datasets.synthetic import split_sums
from tt_data.messages import Message
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.transforms import RowTransform, _openai_turns


class PromptTransform(RowTransform):
    """Row -> ``{"prompt_tokens", "prompt", **columns}``.

    ``prompt`` is a string (one user turn, after an optional system prompt) or a list of
    ``{"role", "content"}`` messages. With ``chat=False`` a string prompt is plain text to
    continue (bos + its tokens, no chat template: a base model's prompt). A prompt longer than
    ``max_prompt_len`` tokens is an error, never cut: a truncated prompt would ask another
    question.
    """

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        column_map: Mapping[str, str] | None = None,
        system_prompt: str | None = None,
        max_prompt_len: int | None = None,
        chat: bool = True,
    ) -> None:
        super().__init__(column_map)
        if not chat and system_prompt is not None:
            raise ValueError("system_prompt needs chat=True (plain-text prompts have no turns)")
        self.tokenizer = tokenizer
        self.chat = chat
        self.system_prompt = system_prompt
        self.max_prompt_len = max_prompt_len or getattr(tokenizer, "max_seq_len", None)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        column = self.column("prompt")
        value = row.get(column)
        if isinstance(value, list):
            messages = _openai_turns(value, index)
            text = messages[-1].text if messages else ""
        else:
            text = self.field(row, "prompt", index)
            messages = [Message(role="user", content=text)]
            if self.system_prompt is not None:
                messages.insert(0, Message(role="system", content=self.system_prompt))
        refuse_images(messages, index)
        truncated_before = getattr(self.tokenizer, "num_truncated", 0)
        if self.chat or isinstance(value, list):
            tokens, _ = self.tokenizer.tokenize_messages(messages, add_generation_prompt=True)
        else:
            tokens = self.tokenizer.encode(text, add_bos=True, add_eos=False)
        if getattr(self.tokenizer, "num_truncated", 0) != truncated_before or (
            self.max_prompt_len is not None and len(tokens) > self.max_prompt_len
        ):
            raise ValueError(
                f"row {index}: the prompt is longer than max_prompt_len={self.max_prompt_len} "
                "tokens; prompts are never cut (that would ask another question): raise the "
                "limit or filter long prompts out with filter_fn"
            )
        others = {k: v for k, v in row.items() if k != column}
        return {"prompt_tokens": tokens, "prompt": text, "row_index": index, **others}

    def check(self, row: Mapping[str, Any], index: int) -> None:
        self(row, index)


def prompt_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    system_prompt: str | None = None,
    max_prompt_len: int | None = None,
    chat: bool = True,
    filter_fn: Callable[[dict], bool] | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Prompts from a hub dataset or local file (column ``prompt``, or ``column_map``); with
    ``chat=False`` plain text for the model to continue."""
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    if not isinstance(rows, datasets.Dataset):
        raise DataError(f"prompt_dataset needs a map-style dataset; {source!r} is streaming")
    transform = PromptTransform(tokenizer, column_map, system_prompt, max_prompt_len, chat)
    _check_rows(rows, transform)
    return TokenizedDataset(rows, transform)


def gsm8k_prompts(
    tokenizer: ModelTokenizer, *, source: str = "openai/gsm8k", **kwargs: Any
) -> torch.utils.data.Dataset:
    """GSM8K questions as prompts; ``answer`` keeps the reference solution ("... #### 72")."""
    kwargs.setdefault("column_map", {"prompt": "question"})
    if source == "openai/gsm8k":
        kwargs.setdefault("name", "main")
    return prompt_dataset(tokenizer, source=source, **kwargs)


def arithmetic_prompt_rows(
    n: int, seed: int = 0, split: str = "train", max_operand: int = 30, above: int = 20
) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt": "What is a + b?", "answer": "a+b"}`` with a, b <= max_operand
    and max(a, b) > ``above``. A fixed fifth of those pairs is held out: ``split="train"``
    never draws them, ``split="validation"`` draws only them, so a validation score is on
    sums the policy never trained on."""
    if split not in ("train", "validation"):
        raise ValueError(f"split {split!r} is not valid; expected 'train' or 'validation'")
    pairs = split_sums(max_operand, split, above)
    if not pairs:
        raise ValueError(f"no sums with max_operand={max_operand} above {above} in split {split!r}")
    rng = random.Random(f"tt-arithmetic-prompts:{seed}:{split}")
    return [
        {"prompt": f"What is {a} + {b}?", "answer": str(a + b)}
        for a, b in (rng.choice(pairs) for _ in range(n))
    ]


def synthetic_arithmetic_prompts(
    tokenizer: ModelTokenizer,
    *,
    n: int = 1000,
    seed: int = 0,
    split: str = "train",
    max_operand: int = 30,
    above: int = 20,
) -> torch.utils.data.Dataset:
    """Sum questions to answer (the ``answer`` column is the sum), held-out pairs apart."""
    rows = datasets.Dataset.from_list(arithmetic_prompt_rows(n, seed, split, max_operand, above))
    transform = PromptTransform(tokenizer)
    _check_rows(rows, transform)
    return TokenizedDataset(rows, transform)
