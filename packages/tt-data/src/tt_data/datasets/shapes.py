"""Generated pictures of coloured shapes, so a vision recipe can show learning offline on CPU.

A row is a picture of one shape (square, circle or triangle) in one colour on a white canvas
of random size and aspect ratio (so images take one tile or several), and the question "What
is in the picture?" whose answer is ``"<colour> <shape>"``. Pictures are drawn when an item is
read; a row holds only the numbers that draw it, so the data depends only on
``(n, seed, split)``. Train and validation draw from separate random streams: validation
pictures are new placements, sizes and canvases of the same colours and shapes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import datasets
import PIL.Image
import PIL.ImageDraw
import torch

from tt_data.datasets.base import TokenizedDataset
from tt_data.datasets.multimodal import MultimodalTransform
from tt_data.messages import ImagePart, Message, TextPart
from tt_data.tokenizers.protocol import ModelTokenizer
from tt_data.vision import TiledImageTransform

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("square", "circle", "triangle")
QUESTION = "What is in the picture?"
SPLITS = ("train", "validation")


def shape_rows(n: int, seed: int = 0, split: str = "train", side: int = 28) -> list[dict[str, Any]]:
    """``n`` rows of drawing instructions: canvas ``width x height`` (``side`` to ``2 * side``
    pixels each way), a shape of ``size`` pixels at ``(x, y)``, its colour and kind."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not valid for synthetic data; expected {SPLITS}")
    if n < 1:
        raise ValueError(f"need n >= 1, got n={n}")
    rng = random.Random(f"tt-synthetic-shapes:{seed}:{split}")
    rows = []
    for _ in range(n):
        width, height = rng.randint(side, 2 * side), rng.randint(side, 2 * side)
        size = rng.randint(min(width, height) * 3 // 5, min(width, height) - 2)
        rows.append({
            "colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES),
            "width": width, "height": height, "size": size,
            "x": rng.randint(0, width - size), "y": rng.randint(0, height - size),
        })  # fmt: skip
    return rows


def draw_shape(row: Mapping[str, Any]) -> PIL.Image.Image:
    """The RGB picture a row of ``shape_rows`` describes."""
    image = PIL.Image.new("RGB", (row["width"], row["height"]), "white")
    x, y, size, fill = row["x"], row["y"], row["size"], COLOURS[row["colour"]]
    box = (x, y, x + size - 1, y + size - 1)
    draw = PIL.ImageDraw.Draw(image)
    if row["shape"] == "square":
        draw.rectangle(box, fill=fill)
    elif row["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(
            [(x + size / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill
        )
    return image


class ShapeToMessages:
    """A ``shape_rows`` row -> the picture and the question, then ``"<colour> <shape>"``."""

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        user = Message("user", (ImagePart(draw_shape(row)), TextPart(QUESTION)))
        return [user, Message("assistant", f"{row['colour']} {row['shape']}")]


def synthetic_shapes(
    tokenizer: ModelTokenizer,
    *,
    n: int = 1000,
    seed: int = 0,
    split: str = "train",
    tile_size: int = 28,
    max_num_tiles: int = 2,
) -> torch.utils.data.Dataset:
    """Image SFT dataset: "What is in the picture?" -> "red square" (only the answer trained).

    Pictures are ``tile_size`` to ``2 * tile_size`` pixels each way and tiled for a model of
    ``tile_size`` tiles, at most ``max_num_tiles`` per picture."""
    rows = datasets.Dataset.from_list(shape_rows(n, seed, split, tile_size))
    transform = TiledImageTransform(tile_size=tile_size, max_num_tiles=max_num_tiles)
    return TokenizedDataset(rows, MultimodalTransform(tokenizer, ShapeToMessages(), transform))
