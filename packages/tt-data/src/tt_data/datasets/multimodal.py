"""Image + text datasets (Llama 3.2 Vision style): conversations whose turns hold images.

An item is ``{"tokens", "labels"}`` as the text datasets give them, plus ``images`` (one
``[n_tiles_i, 3, tile_size, tile_size]`` float32 tensor per image, in the order of the image
tokens) and ``aspect_ratio_ids`` (one int per image). ``padded_collate_vision`` batches them.

Images are decoded and tiled in ``__getitem__``, never up front: image datasets are big. What
can be checked without decoding (columns, counts, that image files exist) is checked for
every row when the dataset is built, so a bad row fails before training with its file and
row named.

Truncation: when ``max_seq_len`` cuts off image tokens, their images are dropped too, so an
item always has exactly one image per image token.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import PIL.Image
import torch

from tt_data.datasets.base import (
    _ORIGINS,
    DataError,
    StreamingTokenizedDataset,
    TokenizedDataset,
    _check_rows,
    labels_from_mask,
    load_rows,
)
from tt_data.images import ImageSource, check_image_source, load_image
from tt_data.messages import ImagePart, Message, TextPart, apply_masking, check_masking_strategy
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.transforms import RowTransform, _non_empty, _openai_turns, with_system_prompt
from tt_data.vision import TiledImage, TiledImageTransform

ImageTransform = Callable[[PIL.Image.Image], TiledImage]


class MultimodalMessages(RowTransform):
    """``{"messages": [...], "images": [...] (optional)}`` -> messages whose image parts hold
    their images.

    Turns are OpenAI/HF style: ``content`` is a str or a list of ``{"type": "text", "text"}``
    and ``{"type": "image", "image": <path/bytes/...>}`` parts. Image parts without an image
    (placeholders, ``{"type": "image"}``) take the row's ``images`` in order, one each.
    """

    def __init__(
        self, column_map: Mapping[str, str] | None = None, system_prompt: str | None = None
    ) -> None:
        super().__init__(column_map)
        self.system_prompt = system_prompt

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        turns = self.field(row, "messages", index, list)
        messages = _non_empty(_openai_turns(turns, index), index)
        column = self.column("images")
        images = row.get(column)
        placeholders = sum(
            isinstance(p, ImagePart) and p.image is None for m in messages for p in m.parts
        )
        if images is None and placeholders:
            raise ValueError(
                f"row {index}: {placeholders} image part(s) have no 'image' and the row has no "
                f"{column!r} column to fill them; give each part an 'image' or the row a list "
                f"of images in {column!r}"
            )
        if images is not None:
            if not isinstance(images, (list, tuple)):
                raise TypeError(
                    f"row {index}: column {column!r} must be a list of images, got "
                    f"{type(images).__name__}: {images!r:.80}"
                )
            if placeholders != len(images):
                raise ValueError(
                    f"row {index}: {placeholders} image placeholder(s) ({{'type': 'image'}} "
                    f"without an 'image') but {len(images)} image(s) in column {column!r}; "
                    "they must match one to one"
                )
            messages = _fill_placeholders(messages, list(images))
        return with_system_prompt(messages, self.system_prompt)


class VQAToMessages(RowTransform):
    """``{"image", "question", "answer"}`` -> user (image then question), assistant (answer):
    the image first in the user turn, as Meta's format puts it."""

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        image = self.field(row, "image", index, object)
        question = self.field(row, "question", index)
        answer = self.field(row, "answer", index)
        user = Message("user", (ImagePart(image), TextPart(question)))
        return [user, Message("assistant", answer)]


class TheCauldronToMessages(RowTransform):
    """``{"images": [...], "texts": [{"user", "assistant"}, ...]}`` (HuggingFaceM4's The
    Cauldron) -> the images, then the first question, in the first user turn; each answer an
    assistant turn. ``system_prompt`` adds a system turn that is never trained."""

    def __init__(
        self, column_map: Mapping[str, str] | None = None, system_prompt: str | None = None
    ) -> None:
        super().__init__(column_map)
        self.system_prompt = system_prompt

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        images = self.field(row, "images", index, list)
        texts = self.field(row, "texts", index, list)
        messages = []
        for turn, text in enumerate(texts):
            if not isinstance(text, Mapping) or not all(
                isinstance(text.get(k), str) for k in ("user", "assistant")
            ):
                raise ValueError(
                    f"row {index}, text {turn}: expected {{'user': str, 'assistant': str}}, got "
                    f"{text!r:.80}"
                )
            first = tuple(ImagePart(image) for image in images) if turn == 0 else ()
            messages.append(Message("user", (*first, TextPart(text["user"]))))
            messages.append(Message("assistant", text["assistant"]))
        return with_system_prompt(_non_empty(messages, index), self.system_prompt)


class MultimodalTransform:
    """Row -> ``{"tokens", "labels", "images", "aspect_ratio_ids"}`` (see the module doc)."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        message_transform: Callable[[Mapping[str, Any], int], list[Message]],
        image_transform: ImageTransform,
        *,
        masking_strategy: str = "train_on_assistant",
        image_dir: str | os.PathLike | None = None,
        max_images: int | None = None,
        source_name: str | None = None,
    ) -> None:
        check_masking_strategy(masking_strategy)
        image_id = getattr(tokenizer, "image_id", None)
        if image_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no image token, so images cannot be placed in "
                "the text; use the tokenizer of a vision model (Llama 3.2 Vision: <|image|>)"
            )
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
        self.tokenizer = tokenizer
        self.image_id: int = image_id
        self.message_transform = message_transform
        self.image_transform = image_transform
        self.masking_strategy = masking_strategy
        self.image_dir = image_dir
        self.max_images = max_images
        self.source_name = source_name

    def messages(
        self, row: Mapping[str, Any], index: int
    ) -> tuple[list[Message], list[ImageSource]]:
        """The row's messages and their images, in order."""
        messages = self.message_transform(row, index)
        images = [p.image for m in messages for p in m.parts if isinstance(p, ImagePart)]
        for k, image in enumerate(images):
            if image is None:
                raise ValueError(f"row {index}, image {k}: the image is null")
        if self.max_images is not None and len(images) > self.max_images:
            raise ValueError(
                f"row {index}: {len(images)} images, more than max_images={self.max_images}; "
                "raise max_images or leave such rows out with filter_fn"
            )
        return messages, images

    def check(self, row: Mapping[str, Any], index: int) -> None:
        """Raise what ``__call__`` would about columns, counts and missing image files,
        without decoding images or tokenizing."""
        _, images = self.messages(row, index)
        for k, image in enumerate(images):
            check_image_source(image, image_dir=self.image_dir, where=f"row {index}, image {k}")

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        where = f"{self.source_name}: row {index}" if self.source_name else f"row {index}"
        messages, images = self.messages(row, index)
        truncated_before = getattr(self.tokenizer, "num_truncated", 0)
        tokens, mask = self.tokenizer.tokenize_messages(
            apply_masking(messages, self.masking_strategy)
        )
        truncated = getattr(self.tokenizer, "num_truncated", 0) != truncated_before
        n_tokens = tokens.count(self.image_id)
        if n_tokens > len(images) or (n_tokens < len(images) and not truncated):
            raise DataError(
                f"{where}: the chat format gave {n_tokens} image token(s) for {len(images)} "
                "image(s); the text may hold the image token as a string, or the chat "
                "template may not render image parts"
            )
        tiled = [
            self.image_transform(
                load_image(source, image_dir=self.image_dir, where=f"{where}, image {k}")
            )
            for k, source in enumerate(images[:n_tokens])  # images cut off with their tokens
        ]
        return {
            "tokens": tokens,
            "labels": labels_from_mask(tokens, mask),
            "images": [t.tiles for t in tiled],
            "aspect_ratio_ids": [t.aspect_ratio_id for t in tiled],
        }


def multimodal_chat_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    image_transform: ImageTransform | None = None,
    image_dir: str | os.PathLike | None = None,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    filter_fn: Callable[[dict], bool] | None = None,
    masking_strategy: str = "train_on_assistant",
    system_prompt: str | None = None,
    max_images: int | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Conversations with images: a ``messages`` column (OpenAI/HF turns whose content may be
    a list of text and image parts) and optionally an ``images`` column whose images fill the
    ``{"type": "image"}`` placeholders in order (the_cauldron / LLaVA-style rows).

    ``image_transform`` defaults to Llama 3.2 Vision's ``TiledImageTransform()``; relative
    image paths are under ``image_dir`` (else the working directory). A row with more than
    ``max_images`` images is an error.

    Example row::

        {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.jpg"},
                                                   {"type": "text", "text": "What is this?"}]},
                      {"role": "assistant", "content": "A cat."}]}
    """
    message_transform = MultimodalMessages(column_map, system_prompt)
    return _build(
        tokenizer, source, message_transform, image_transform, image_dir, split, filter_fn,
        masking_strategy, max_images, load_dataset_kwargs,
    )  # fmt: skip


def vqa_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str,
    image_transform: ImageTransform | None = None,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    image_dir: str | os.PathLike | None = None,
    split: str = "train",
    filter_fn: Callable[[dict], bool] | None = None,
    train_on_input: bool = False,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """One image and a question per row, the answer trained: the user turn is the image then
    the question (Meta's order), the assistant turn the answer. The image column holds a path
    (under ``image_dir`` when relative), bytes or an HF ``Image`` feature."""
    column_map = {"image": image_column, "question": question_column, "answer": answer_column}
    strategy = "train_on_all" if train_on_input else "train_on_assistant"
    return _build(
        tokenizer, source, VQAToMessages(column_map), image_transform, image_dir, split,
        filter_fn, strategy, None, load_dataset_kwargs,
    )  # fmt: skip


def the_cauldron(
    tokenizer: ModelTokenizer,
    *,
    subset: str | None = "ocrvqa",
    source: str = "HuggingFaceM4/the_cauldron",
    image_transform: ImageTransform | None = None,
    column_map: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    split: str = "train",
    filter_fn: Callable[[dict], bool] | None = None,
    max_images: int | None = None,
    **load_dataset_kwargs: Any,
) -> torch.utils.data.Dataset:
    """A subset of HuggingFaceM4's The Cauldron (``ocrvqa``, ``ai2d``, ``chartqa``, ...):
    rows of ``images`` and ``texts`` (question/answer turns about them); the answers are
    trained (see ``TheCauldronToMessages``). ``subset: null`` for rows in local files
    (``source: parquet``, ``data_files: ...``)."""
    message_transform = TheCauldronToMessages(column_map, system_prompt)
    subset_kwargs = {} if subset is None else {"name": subset}
    return _build(
        tokenizer, source, message_transform, image_transform, None, split, filter_fn,
        "train_on_assistant", max_images, {**subset_kwargs, **load_dataset_kwargs},
    )  # fmt: skip


def _build(
    tokenizer: ModelTokenizer,
    source: str,
    message_transform: Callable[[Mapping[str, Any], int], list[Message]],
    image_transform: ImageTransform | None,
    image_dir: str | os.PathLike | None,
    split: str,
    filter_fn: Callable[[dict], bool] | None,
    masking_strategy: str,
    max_images: int | None,
    load_dataset_kwargs: dict[str, Any],
) -> torch.utils.data.Dataset:
    rows = load_rows(source, split, filter_fn, **load_dataset_kwargs)
    origin = _ORIGINS.get(rows)
    sample_fn = MultimodalTransform(
        tokenizer,
        message_transform,
        image_transform if image_transform is not None else TiledImageTransform(),
        masking_strategy=masking_strategy,
        image_dir=image_dir,
        max_images=max_images,
        source_name=origin["name"] if origin else None,
    )
    if not isinstance(rows, datasets.Dataset):
        return StreamingTokenizedDataset(rows, sample_fn)
    _check_rows(_without_image_decoding(rows), sample_fn)
    return TokenizedDataset(rows, sample_fn)


def _without_image_decoding(rows: datasets.Dataset) -> datasets.Dataset:
    """``rows`` whose ``Image`` features give ``{"bytes", "path"}`` dicts: checking every row
    must not decode every image. Casting only the feature is cheap (same Arrow storage)."""
    out = rows
    for name, feature in rows.features.items():
        undecoded = _no_decode(feature)
        if undecoded is not feature:
            out = out.cast_column(name, undecoded)
    if out is not rows and rows in _ORIGINS:
        _ORIGINS[out] = _ORIGINS[rows]
    return out


def _no_decode(feature: Any) -> Any:
    """``feature`` with every ``Image`` in it set to ``decode=False`` (the same object when
    there is none)."""
    if isinstance(feature, datasets.Image):
        return dataclasses.replace(feature, decode=False) if feature.decode else feature
    if isinstance(feature, dict):
        inner = {k: _no_decode(v) for k, v in feature.items()}
        changed = any(inner[k] is not v for k, v in feature.items())
        return type(feature)(inner) if changed else feature
    if isinstance(feature, list) and feature:
        inner_one = _no_decode(feature[0])
        return [inner_one] if inner_one is not feature[0] else feature
    if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):
        inner_one = _no_decode(feature.feature)
        return (
            dataclasses.replace(feature, feature=inner_one)
            if inner_one is not feature.feature
            else feature
        )
    return feature


def _fill_placeholders(messages: list[Message], images: list[Any]) -> list[Message]:
    """``messages`` with their image placeholders given ``images`` in order."""
    queue = iter(images)
    filled = []
    for m in messages:
        if isinstance(m.content, str) or not any(
            isinstance(p, ImagePart) and p.image is None for p in m.content
        ):
            filled.append(m)
            continue
        parts = tuple(
            ImagePart(next(queue)) if isinstance(p, ImagePart) and p.image is None else p
            for p in m.content
        )
        filled.append(dataclasses.replace(m, content=parts))
    return filled
