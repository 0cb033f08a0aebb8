"""Images for a vision model outside training: a prompt's images as model inputs, and how
often a model's greedy answers equal a dataset's (the check the tiny vision model is held to).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tt_data import IGNORE_INDEX, TiledImageTransform, load_image, padded_collate_vision
from tt_data.messages import ImagePart, Message
from tt_models import generate
from tt_models.generation import IMAGE_KEYS


def image_transform(model: torch.nn.Module) -> TiledImageTransform:
    """The transform that tiles images for ``model``'s image encoder."""
    vision = _vision_config(model)
    return TiledImageTransform(tile_size=vision.tile_size, max_num_tiles=vision.max_num_tiles)


def prompt_images(
    model: torch.nn.Module, tokenizer: Any, tokens: list[int], messages: Sequence[Message]
) -> dict[str, torch.Tensor] | None:
    """The image inputs of one prompt (``tokens``, formatted from ``messages``) for
    ``generate``: None when the messages hold no image."""
    sources = [p.image for m in messages for p in m.parts if isinstance(p, ImagePart)]
    if not sources:
        return None
    transform = image_transform(model)
    tiled = [
        transform(load_image(source, where=f"prompt image {k}")) for k, source in enumerate(sources)
    ]
    sample = {
        "tokens": tokens,
        "labels": tokens,
        "images": [t.tiles for t in tiled],
        "aspect_ratio_ids": [t.aspect_ratio_id for t in tiled],
    }
    return _image_batch([sample], model, tokenizer)


def _image_batch(
    samples: list[dict[str, Any]], model: torch.nn.Module, tokenizer: Any
) -> dict[str, torch.Tensor] | None:
    vision = _vision_config(model)
    batch = padded_collate_vision(
        samples, tokenizer.pad_id, image_token_id=tokenizer.image_id,
        max_num_tiles=vision.max_num_tiles,
    )  # fmt: skip
    return {k: batch[k] for k in IMAGE_KEYS} if "images" in batch else None


def _vision_config(model: torch.nn.Module) -> Any:
    vision = getattr(model.config, "vision", None)
    if vision is None:
        raise ValueError(
            f"the prompt holds images but the model ({model.config.model_type}) has no image "
            "encoder"
        )
    return vision


@torch.no_grad()
def answer_accuracy(
    model: torch.nn.Module, tokenizer: Any, dataset: Any, max_new_tokens: int = 16
) -> float:
    """The fraction of ``dataset``'s samples whose trained tokens (the answer) the model
    generates greedily, given everything before them (prompt and images) — exact match of
    the text, end-of-turn tokens aside."""
    correct = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        labels = sample["labels"]
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        prompt = sample["tokens"][:first]
        images = None
        if sample.get("images"):
            images = _image_batch(
                [{**sample, "tokens": prompt, "labels": prompt}], model, tokenizer
            )
        out, _ = generate(
            model, [prompt], max_new_tokens, temperature=0, stop_tokens=tokenizer.stop_tokens,
            pad_id=tokenizer.pad_id, images=images,
        )  # fmt: skip
        answer = [t for t in labels[first:] if t != IGNORE_INDEX]
        correct += _text(tokenizer, out[0].tolist()) == _text(tokenizer, answer)
    return correct / len(dataset)


def _text(tokenizer: Any, ids: list[int]) -> str:
    stops = set(tokenizer.stop_tokens)
    kept = []
    for token in ids:
        if token in stops:
            break
        kept.append(token)
    return tokenizer.decode(kept).strip()
