"""Tokenized datasets and the generic builders on top of ``datasets.load_dataset``.

Items (unshifted labels; the recipe shifts them; -100 marks positions without loss):

- SFT / text: ``{"tokens": list[int], "labels": list[int]}``
- preference: ``{"chosen_tokens", "chosen_labels", "rejected_tokens", "rejected_labels"}``

A map-style source gives a map-style dataset (``len``/``__getitem__``, tokenized lazily and
deterministically), so a sampler plus a saved position resumes exactly. ``streaming=True``
gives an iterable dataset whose ``iter_from(n)`` skips raw rows without tokenizing them.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import datasets
import torch

from tt_data.labels import IGNORE_INDEX
from tt_data.messages import Message, apply_masking, check_masking_strategy
from tt_data.packing import IterablePackedDataset, PackedDataset
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.transforms import (
    ChosenRejectedToMessages,
    InputOutputToMessages,
    OpenAIToMessages,
    RowTransform,
    ShareGPTToMessages,
)

Sample = dict[str, list[int]]
SampleFn = Callable[[Mapping[str, Any], int], Sample]


def labels_from_mask(tokens: list[int], mask: list[bool]) -> list[int]:
    """Tokens with masked positions replaced by -100."""
    return [IGNORE_INDEX if m else t for t, m in zip(tokens, mask)]


class SFTTransform:
    """Row -> messages -> masked tokens: ``{"tokens", "labels"}``."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        message_transform: Callable[[Mapping[str, Any], int], list[Message]],
        masking_strategy: str = "train_on_assistant",
    ) -> None:
        check_masking_strategy(masking_strategy)
        self.tokenizer = tokenizer
        self.message_transform = message_transform
        self.masking_strategy = masking_strategy

    def tokenize(self, messages: list[Message]) -> Sample:
        """Mask and tokenize one conversation."""
        messages = apply_masking(messages, self.masking_strategy)
        tokens, mask = self.tokenizer.tokenize_messages(messages)
        return {"tokens": tokens, "labels": labels_from_mask(tokens, mask)}

    def __call__(self, row: Mapping[str, Any], index: int) -> Sample:
        messages = self.message_transform(row, index)
        refuse_images(messages, index)
        return self.tokenize(messages)

    def check(self, row: Mapping[str, Any], index: int) -> None:
        """Raise what ``__call__`` would raise about the row's columns, without tokenizing."""
        messages = self.message_transform(row, index)
        for conversation in messages if isinstance(messages, tuple) else (messages,):
            refuse_images(conversation, index)


def refuse_images(messages: list[Message], index: int) -> None:
    """Text datasets have no images to give: an image part would be a token without one."""
    for turn, message in enumerate(messages):
        if message.num_images:
            raise ValueError(
                f"row {index}, turn {turn}: the message has {message.num_images} image "
                "part(s); this dataset is text-only (for images: multimodal_chat_dataset, "
                "vqa_dataset)"
            )


class PreferenceTransform(SFTTransform):
    """Row -> (chosen, rejected) -> ``{"chosen_tokens", ..., "rejected_labels"}``."""

    def __call__(self, row: Mapping[str, Any], index: int) -> Sample:
        chosen, rejected = self.message_transform(row, index)
        refuse_images(chosen, index)
        refuse_images(rejected, index)
        out = {}
        for prefix, messages in (("chosen", chosen), ("rejected", rejected)):
            sample = self.tokenize(messages)
            out[f"{prefix}_tokens"], out[f"{prefix}_labels"] = sample["tokens"], sample["labels"]
        return out


class TextTransform(RowTransform):
    """Row ``{"text"}`` -> bos + text (+ eos), every token trained, truncated to max_seq_len."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        column_map: Mapping[str, str] | None = None,
        add_eos: bool = True,
    ) -> None:
        super().__init__(column_map)
        self.tokenizer = tokenizer
        self.add_eos = add_eos

    def __call__(self, row: Mapping[str, Any], index: int) -> Sample:
        self.check(row, index)
        tokens = self.tokenizer.encode(self.field(row, "text", index), add_eos=self.add_eos)
        truncate = getattr(self.tokenizer, "truncate", None)
        if truncate is not None:
            tokens, _ = truncate(tokens, [False] * len(tokens))
        return {"tokens": tokens, "labels": list(tokens)}

    def check(self, row: Mapping[str, Any], index: int) -> None:
        self.field(row, "text", index)


class DataError(ValueError):
    """A dataset's file or row cannot be used; the message names the file and the row."""


# Where each loaded set of rows came from (a file, a hub dataset), for error messages.
_ORIGINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_rows(rows: datasets.Dataset, sample_fn: SampleFn) -> None:
    """Every row has the columns and types the transform reads: found now, with the file and
    row named, rather than as a bare error in the middle of training."""
    check = getattr(sample_fn, "check", None)
    if check is None:
        return
    origin = _ORIGINS.get(rows)
    index = 0
    try:
        for index, row in enumerate(rows):
            _check_row(check, row, index, origin)
    except UnicodeDecodeError as e:  # datasets may read a non-UTF-8 file and fail on access
        problem = _diagnose(origin["files"], origin["source"]) if origin else None
        raise DataError(problem or f"row {index}: text that is not UTF-8 ({e})") from None


def _check_row(check: Callable, row: Mapping[str, Any], index: int, origin: Any) -> None:
    try:
        check(row, index)
    except (KeyError, TypeError, ValueError) as e:
        message = e.args[0] if e.args else str(e)
        where = f"{origin['name']}: " if origin else ""
        line = f" (line {index + 1})" if origin and origin["line_per_row"] else ""
        raise DataError(
            f"{where}{message.replace(f'row {index}', f'row {index}{line}', 1)}"
        ) from None


class TokenizedDataset(torch.utils.data.Dataset):
    """Map-style: item ``i`` is ``sample_fn(rows[i], i)``, computed on access."""

    def __init__(self, rows: datasets.Dataset, sample_fn: SampleFn) -> None:
        self.rows = rows
        self.sample_fn = sample_fn

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        return self.sample_fn(self.rows[index], index)


class StreamingTokenizedDataset(torch.utils.data.IterableDataset):
    """Iterable: tokenizes rows as they stream in, holding one row at a time."""

    def __init__(self, rows: Any, sample_fn: SampleFn) -> None:
        self.rows = rows
        self.sample_fn = sample_fn

    def iter_from(self, start: int) -> Iterator[Sample]:
        """Samples from raw row ``start`` on; skipped rows are not tokenized."""
        origin = _ORIGINS.get(self.rows)
        for index, row in enumerate(self.rows):
            if index >= start:
                try:
                    yield self.sample_fn(row, index)
                except (KeyError, TypeError) as e:
                    where = f"{origin['name']}: " if origin else ""
                    raise DataError(f"{where}{e.args[0] if e.args else e}") from None

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_from(0)


def load_rows(
    source: str,
    split: str = "train",
    filter_fn: Callable[[dict], bool] | None = None,
    **load_dataset_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """``datasets.load_dataset(source, split=split, ...)``, filtered, refusing empty results.

    A local file that cannot be read (not UTF-8, malformed JSON, empty) is a ``DataError``
    naming the file and the line."""
    files = _local_files(load_dataset_kwargs.get("data_files"))
    try:
        rows = datasets.load_dataset(source, split=split, **load_dataset_kwargs)
    except Exception as e:  # StopIteration (an empty file) included
        problem = _diagnose(files, source)
        if problem is None:
            raise
        raise DataError(problem) from e
    where = f"dataset {source!r} (split={split!r}, {load_dataset_kwargs})"
    if not isinstance(rows, (datasets.Dataset, datasets.IterableDataset)):
        raise ValueError(f"{where} gave a {type(rows).__name__}; pass a single split")
    if filter_fn is not None:
        rows = rows.filter(filter_fn)
    if isinstance(rows, datasets.Dataset) and len(rows) == 0:
        reason = " after filter_fn" if filter_fn is not None else ""
        raise ValueError(f"{where} has no rows{reason}; a training dataset cannot be empty")
    name = files[0] if len(files) == 1 else f"dataset {source!r}"
    line_per_row = len(files) == 1 and files[0].endswith(".jsonl") and filter_fn is None
    _ORIGINS[rows] = {
        "name": str(name),
        "line_per_row": line_per_row,
        "files": files,
        "source": source,
    }
    return rows


def _local_files(data_files: Any) -> list[str]:
    """The local paths among ``data_files`` (a path, a list, or a dict of split -> paths)."""
    if data_files is None:
        return []
    if isinstance(data_files, Mapping):
        return [f for v in data_files.values() for f in _local_files(v)]
    items = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    return [str(f) for f in items if "://" not in str(f) and os.path.isfile(f)]


def _diagnose(files: list[str], source: str) -> str | None:
    """The first thing wrong with local data files, named by file and line; None if none is
    found (the error was not about the files)."""
    for path in files:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        if not any(line.strip() for line in lines):
            return f"{path} is empty: a dataset file needs at least one row"
        for number, raw in enumerate(lines, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return (
                    f"{path}, line {number}: byte {raw[e.start : e.start + 1]!r} at column "
                    f"{e.start + 1} is not UTF-8; re-save the file as UTF-8"
                )
        if source == "json":
            problem = _json_problem(path, [raw.decode("utf-8") for raw in lines])
            if problem is not None:
                return problem
    return None


def _json_problem(path: str, lines: list[str]) -> str | None:
    """A JSON file (one document) or JSON Lines file (one object per line) that parses as
    neither: the first line that fails."""
    try:
        json.loads("\n".join(lines))
        return None
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno})"
    return None


def build_dataset(
    rows: datasets.Dataset | datasets.IterableDataset,
    sample_fn: SampleFn,
    packed: bool,
    tokenizer: ModelTokenizer,
    max_seq_len: int | None = None,
) -> torch.utils.data.Dataset:
    """Wrap rows as a map-style or streaming dataset, packed when asked."""
    if isinstance(rows, datasets.IterableDataset):
        dataset: Any = StreamingTokenizedDataset(rows, sample_fn)
    else:
        _check_rows(rows, sample_fn)
        dataset = TokenizedDataset(rows, sample_fn)
    if not packed:
        return dataset
    max_len = max_seq_len or tokenizer.max_seq_len
    if max_len is None:
        raise ValueError(
            "packed=True needs a pack length: set max_seq_len on the tokenizer "
            "(from_pretrained(dir, max_seq_len=...)) or pass max_seq_len= to the builder"
        )
    pack_cls = (
        IterablePackedDataset if isinstance(dataset, StreamingTokenizedDataset) else PackedDataset
    )
    return pack_cls(dataset, max_seq_len=max_len, pad_id=tokenizer.pad_id)


def instruct_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    packed: bool = False,
    filter_fn: Callable[[dict], bool] | None = None,
    train_on_input: bool = False,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    max_seq_len: int | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Input/output rows as a user turn and an assistant answer (answer trained)."""
    transform = InputOutputToMessages(column_map, prompt_template, system_prompt)
    strategy = "train_on_all" if train_on_input else "train_on_assistant"
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    sample_fn = SFTTransform(tokenizer, transform, strategy)
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)


CONVERSATION_STYLES = {"sharegpt": ShareGPTToMessages, "openai": OpenAIToMessages}


def chat_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    conversation_style: str = "openai",
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    packed: bool = False,
    filter_fn: Callable[[dict], bool] | None = None,
    masking_strategy: str = "train_on_assistant",
    system_prompt: str | None = None,
    max_seq_len: int | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Multi-turn conversations in ShareGPT (``conversations``) or OpenAI (``messages``) form;
    ``system_prompt`` replaces the rows' system turns (context, never trained)."""
    if conversation_style not in CONVERSATION_STYLES:
        raise ValueError(
            f"conversation_style {conversation_style!r} is not valid; expected one of "
            f"{sorted(CONVERSATION_STYLES)}"
        )
    transform = CONVERSATION_STYLES[conversation_style](column_map, system_prompt)
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    sample_fn = SFTTransform(tokenizer, transform, masking_strategy)
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)


def preference_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    packed: bool = False,
    filter_fn: Callable[[dict], bool] | None = None,
    masking_strategy: str = "train_on_assistant",
    system_prompt: str | None = None,
    max_seq_len: int | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Chosen/rejected pairs (strings with a prompt, or full message lists); ``system_prompt``
    replaces the rows' system turns (context, never trained)."""
    transform = ChosenRejectedToMessages(column_map, system_prompt)
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    sample_fn = PreferenceTransform(tokenizer, transform, masking_strategy)
    return build_dataset(rows, sample_fn, packed, tokenizer, max_seq_len)


def text_completion_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    packed: bool = False,
    filter_fn: Callable[[dict], bool] | None = None,
    max_seq_len: int | None = None,
    add_eos: bool = True,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Plain text (column ``text``) for continued pre-training; every token trained. Without
    ``add_eos`` a text does not end with eos (a prefix to continue, not a whole document)."""
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    transform = TextTransform(tokenizer, column_map, add_eos)
    return build_dataset(rows, transform, packed, tokenizer, max_seq_len)
