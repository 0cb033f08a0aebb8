"""Named datasets: the generic builders with each dataset's hub name and schema as defaults.

Every builder takes ``source`` (and any ``datasets.load_dataset`` keyword), so the same schema
in a local file works offline: ``alpaca(tok, source="json", data_files="alpaca.jsonl")``.
"""

from __future__ import annotations

from typing import Any

import torch

from tt_data.datasets.base import (
    SFTTransform,
    build_dataset,
    chat_dataset,
    instruct_dataset,
    load_rows,
    preference_dataset,
    text_completion_dataset,
)
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.transforms import AlpacaToMessages


def alpaca(
    tokenizer: ModelTokenizer,
    *,
    source: str = "tatsu-lab/alpaca",
    train_on_input: bool = False,
    packed: bool = False,
    split: str = "train",
    **kwargs: Any,
) -> torch.utils.data.Dataset:
    """Alpaca instruction/input/output rows in Alpaca's prompt format."""
    column_map = kwargs.pop("column_map", None)
    max_seq_len = kwargs.pop("max_seq_len", None)
    rows = load_rows(source, split, kwargs.pop("filter_fn", None), **kwargs)
    strategy = "train_on_all" if train_on_input else "train_on_assistant"
    sample_fn = SFTTransform(tokenizer, AlpacaToMessages(column_map), strategy)
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)


def alpaca_cleaned(
    tokenizer: ModelTokenizer, *, source: str = "yahma/alpaca-cleaned", **kwargs: Any
) -> torch.utils.data.Dataset:
    """The cleaned Alpaca release (same schema)."""
    return alpaca(tokenizer, source=source, **kwargs)


def slimorca(
    tokenizer: ModelTokenizer, *, source: str = "Open-Orca/SlimOrca-Dedup", **kwargs: Any
) -> torch.utils.data.Dataset:
    """SlimOrca: ShareGPT-style ``conversations``."""
    return chat_dataset(tokenizer, source=source, conversation_style="sharegpt", **kwargs)


def samsum(
    tokenizer: ModelTokenizer, *, source: str = "Samsung/samsum", **kwargs: Any
) -> torch.utils.data.Dataset:
    """Dialogue summarization: ``dialogue`` -> ``summary``."""
    kwargs.setdefault("column_map", {"input": "dialogue", "output": "summary"})
    kwargs.setdefault("prompt_template", "Summarize this dialogue:\n{input}\n---\nSummary:\n")
    return instruct_dataset(tokenizer, source=source, **kwargs)


def grammar(
    tokenizer: ModelTokenizer, *, source: str = "liweili/c4_200m", **kwargs: Any
) -> torch.utils.data.Dataset:
    """Grammar correction: ``input`` (erroneous) -> ``output`` (corrected)."""
    kwargs.setdefault(
        "prompt_template", "Correct this to standard English: {input}\n---\nCorrected: "
    )
    return instruct_dataset(tokenizer, source=source, **kwargs)


def gsm8k(
    tokenizer: ModelTokenizer, *, source: str = "openai/gsm8k", **kwargs: Any
) -> torch.utils.data.Dataset:
    """Grade-school math: ``question`` -> ``answer`` (config ``main`` on the hub)."""
    kwargs.setdefault("column_map", {"input": "question", "output": "answer"})
    if source == "openai/gsm8k":
        kwargs.setdefault("name", "main")
    return instruct_dataset(tokenizer, source=source, **kwargs)


def stack_exchange_paired(
    tokenizer: ModelTokenizer, *, source: str = "lvwerra/stack-exchange-paired", **kwargs: Any
) -> torch.utils.data.Dataset:
    """Preference pairs: ``question`` with ``response_j`` (chosen) over ``response_k``."""
    kwargs.setdefault(
        "column_map", {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    )
    if source == "lvwerra/stack-exchange-paired":
        kwargs.setdefault("data_dir", "data/rl")
    return preference_dataset(tokenizer, source=source, **kwargs)


def hh_rlhf_helpful(
    tokenizer: ModelTokenizer, *, source: str = "RLHFlow/HH-RLHF-Helpful-standard", **kwargs: Any
) -> torch.utils.data.Dataset:
    """Anthropic HH helpful pairs; ``chosen``/``rejected`` are full message lists."""
    return preference_dataset(tokenizer, source=source, **kwargs)


def wikitext(
    tokenizer: ModelTokenizer, *, source: str = "EleutherAI/wikitext_document_level", **kwargs: Any
) -> torch.utils.data.Dataset:
    """WikiText-103 documents (column ``page``) for text completion."""
    kwargs.setdefault("column_map", {"text": "page"})
    if source == "EleutherAI/wikitext_document_level":
        kwargs.setdefault("name", "wikitext-103-v1")
    return text_completion_dataset(tokenizer, source=source, **kwargs)


def cnn_dailymail(
    tokenizer: ModelTokenizer, *, source: str = "ccdv/cnn_dailymail", **kwargs: Any
) -> torch.utils.data.Dataset:
    """CNN/DailyMail news articles (column ``article``) for text completion."""
    kwargs.setdefault("column_map", {"text": "article"})
    if source == "ccdv/cnn_dailymail":
        kwargs.setdefault("name", "3.0.0")
    return text_completion_dataset(tokenizer, source=source, **kwargs)
