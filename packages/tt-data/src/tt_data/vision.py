"""Llama 3.2 Vision's image transform: an RGB image -> normalized square tiles.

The image is resized (aspect ratio kept) to fit the best grid of at most ``max_num_tiles``
tiles of ``tile_size`` pixels, padded with black on the right and bottom to fill the grid,
scaled to [0, 1], normalized with ``mean``/``std`` and cut into tiles, row by row. The grid
is chosen as Meta's and transformers' ``MllamaImageProcessor`` choose it: the smallest
upscale that fits, else the largest downscale, ties going to the smaller canvas. Pixel values
equal transformers' PIL backend (``MllamaImageProcessorPil``).

Aspect ratios are ``(rows, cols)`` tile grids; ``aspect_ratio_id`` is the 1-based index of an
image's grid in ``supported_aspect_ratios(max_num_tiles)`` (0 is left for padding images).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image
import torch

from tt_data.images import to_rgb

# The normalization Llama 3.2 Vision was trained with (transformers' IMAGENET_STANDARD_*).
LLAMA3_2_VISION_MEAN = (0.5, 0.5, 0.5)
LLAMA3_2_VISION_STD = (0.5, 0.5, 0.5)
RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "box": PIL.Image.Resampling.BOX,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "hamming": PIL.Image.Resampling.HAMMING,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
}


class TiledImage(NamedTuple):
    """One transformed image."""

    tiles: torch.Tensor  # [rows * cols, 3, tile_size, tile_size] float32
    aspect_ratio: tuple[int, int]  # (rows, cols) of tiles
    aspect_ratio_id: int  # 1-based index into supported_aspect_ratios(max_num_tiles)


@functools.lru_cache(maxsize=16)
def supported_aspect_ratios(max_num_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every ``(rows, cols)`` grid of at most ``max_num_tiles`` tiles, rows-major order:
    ``(1, 1), (1, 2), ..., (1, n), (2, 1), ...`` (transformers' and Meta's order)."""
    if max_num_tiles < 1:
        raise ValueError(f"max_num_tiles must be >= 1, got {max_num_tiles}")
    n = max_num_tiles
    return tuple((r, c) for r in range(1, n + 1) for c in range(1, n + 1) if r * c <= n)


@functools.lru_cache(maxsize=1024)
def optimal_canvas(height: int, width: int, max_num_tiles: int, tile_size: int) -> tuple[int, int]:
    """The ``(height, width)`` in pixels of the tile grid an image of ``height x width`` goes
    to: the smallest scale >= 1 over the grids (the scale that fits the image in a grid is
    min(scale_h, scale_w)), else the largest scale < 1; ties go to the smallest area."""
    canvases = [(r * tile_size, c * tile_size) for r, c in supported_aspect_ratios(max_num_tiles)]
    scales = [min(h / height, w / width) for h, w in canvases]
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    return min((c for c, s in zip(canvases, scales) if s == chosen), key=lambda c: c[0] * c[1])


def fit_to_canvas(
    height: int, width: int, canvas_height: int, canvas_width: int, tile_size: int
) -> tuple[int, int]:
    """The resized ``(height, width)``: each side first clamped to [tile_size, canvas side],
    then the side that scales less is kept and the other follows the aspect ratio (>= 1)."""
    target_h = min(max(height, tile_size), canvas_height)
    target_w = min(max(width, tile_size), canvas_width)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


class TiledImageTransform:
    """Image -> ``TiledImage`` (tiles, aspect ratio, aspect ratio id) for Llama 3.2 Vision.

    Defaults are Meta's and Hugging Face's for Llama 3.2 Vision (560-pixel tiles, at most 4,
    bilinear resizing, mean = std = 0.5 after scaling by 1/255). ``resample`` is a name in
    ``RESAMPLE`` or a PIL resampling constant.

    Example::

        transform = TiledImageTransform()
        tiles, (rows, cols), ratio_id = transform(load_image("cat.jpg", where="cat"))
        # tiles: [rows * cols, 3, 560, 560]
    """

    def __init__(
        self,
        tile_size: int = 560,
        max_num_tiles: int = 4,
        resample: str | int = "bilinear",
        mean: float | Sequence[float] = LLAMA3_2_VISION_MEAN,
        std: float | Sequence[float] = LLAMA3_2_VISION_STD,
        rescale_factor: float = 1 / 255,
    ) -> None:
        if not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
        self.aspect_ratios = supported_aspect_ratios(max_num_tiles)
        self.tile_size = tile_size
        self.max_num_tiles = max_num_tiles
        self.resample = _resample(resample)
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")
        self.rescale_factor = rescale_factor
        # Value of each uint8 level per channel, in transformers' precision: scaled in float64,
        # cast to float32, then normalized in float32. A lookup keeps it exact and fast.
        levels = (torch.arange(256, dtype=torch.float64) * rescale_factor).to(torch.float32)
        mean_t = torch.tensor(self.mean, dtype=torch.float32)[:, None]
        std_t = torch.tensor(self.std, dtype=torch.float32)[:, None]
        self._lut = (levels[None, :] - mean_t) / std_t  # [3, 256]

    def __call__(self, image: PIL.Image.Image) -> TiledImage:
        """Tile one image (any PIL mode; converted to RGB as transformers does)."""
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(
                f"TiledImageTransform takes a PIL image, got {type(image).__name__}; load it "
                "with tt_data.load_image first"
            )
        image = to_rgb(image)
        t = self.tile_size
        canvas_h, canvas_w = optimal_canvas(image.height, image.width, self.max_num_tiles, t)
        rows, cols = canvas_h // t, canvas_w // t
        new_h, new_w = fit_to_canvas(image.height, image.width, canvas_h, canvas_w, t)
        resized = image.resize((new_w, new_h), resample=self.resample)
        levels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
        levels = levels.view(new_h * new_w, 3).T.long()  # [3, h * w]
        pixels = torch.gather(self._lut, 1, levels).view(3, new_h, new_w)
        # Padding is black before normalization, so it takes level 0's normalized value.
        canvas = self._lut[:, :1, None].expand(3, canvas_h, canvas_w).clone()
        canvas[:, :new_h, :new_w] = pixels
        tiles = canvas.view(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(-1, 3, t, t)
        return TiledImage(tiles, (rows, cols), self.aspect_ratios.index((rows, cols)) + 1)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> TiledImageTransform:
        """The transform of a Hugging Face model directory's ``preprocessor_config.json``
        (``size``, ``max_image_tiles``, ``resample``, ``image_mean``, ``image_std``,
        ``rescale_factor``); missing keys keep the defaults."""
        path = Path(path)
        file = path / "preprocessor_config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json at {str(file)!r}")
        try:
            config: dict[str, Any] = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from e
        size = config.get("size", {})
        if size and size.get("height") != size.get("width"):
            raise ValueError(f"{file}: tiles must be square, got size={size}")
        kwargs = {
            "tile_size": size.get("height"),
            "max_num_tiles": config.get("max_image_tiles"),
            "resample": config.get("resample"),
            "mean": config.get("image_mean"),
            "std": config.get("image_std"),
            "rescale_factor": config.get("rescale_factor"),
        }
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def __repr__(self) -> str:
        return (
            f"TiledImageTransform(tile_size={self.tile_size}, max_num_tiles={self.max_num_tiles}"
            f", resample={self.resample.name.lower()!r}, mean={self.mean}, std={self.std})"
        )


def _resample(value: str | int) -> PIL.Image.Resampling:
    if isinstance(value, str) and value.lower() in RESAMPLE:
        return RESAMPLE[value.lower()]
    if isinstance(value, int) and value in set(RESAMPLE.values()):
        return PIL.Image.Resampling(value)
    raise ValueError(f"resample {value!r} is not valid; expected one of {sorted(RESAMPLE)}")


def _per_channel(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{name} must be a number or 3 numbers (R, G, B), got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]))
