"""Image loading: a dataset's image value (a path, bytes, an HF ``Image`` dict, a PIL image)
-> an RGB ``PIL.Image.Image``.

Transparency is composited onto white, as transformers' ``convert_to_rgb`` does before its
image processors, so a loaded image tiles to the same pixels as the raw image does in
transformers. Files and bytes are turned upright by their EXIF orientation, as
``datasets.Image`` and ``transformers.image_utils.load_image`` do. Nothing is downloaded: a
URL is an error that says to fetch the images first.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps

from tt_data.datasets.base import DataError

ImageSource = Any  # str | os.PathLike | bytes | {"bytes": ..., "path": ...} | PIL.Image.Image
SOURCE_KINDS = "a path, bytes, a {'bytes': ..., 'path': ...} dict or a PIL image"


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` in RGB, transparent pixels composited onto white (transformers' rule)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resolve_image_path(
    path: str | os.PathLike, image_dir: str | os.PathLike | None, where: str
) -> Path:
    """``path`` (relative ones under ``image_dir`` when given), checked to exist."""
    text = os.fspath(path)
    if "://" in text:
        raise DataError(
            f"{where}: image {text!r} is a URL; tt_data does not download images: fetch them "
            "and give local paths (or bytes)"
        )
    resolved = Path(text).expanduser()
    if image_dir is not None and not resolved.is_absolute():
        resolved = Path(image_dir).expanduser() / resolved
    if not resolved.is_file():
        hint = "" if image_dir is not None or resolved.is_absolute() else "; set image_dir="
        raise DataError(
            f"{where}: image file {text!r} does not exist (looked for {resolved.absolute()}){hint}"
        )
    return resolved


def check_image_source(
    source: ImageSource, *, image_dir: str | os.PathLike | None = None, where: str
) -> None:
    """Raise the ``DataError`` that ``load_image`` would raise about ``source``'s type or a
    missing file, without reading the image (cheap enough to run on every row up front)."""
    _bytes_or_path(source, image_dir, where)


def load_image(
    source: ImageSource, *, image_dir: str | os.PathLike | None = None, where: str
) -> PIL.Image.Image:
    """Decode ``source`` into an RGB image; problems are a ``DataError`` naming ``where``
    (e.g. ``"data.json: row 12, image 0"``).

    ``source``: a path (relative paths are under ``image_dir`` when given, else the working
    directory), raw bytes of an image file, an HF ``datasets.Image`` dict
    ``{"bytes": ..., "path": ...}`` (bytes win when both are set) or a PIL image.
    """
    if isinstance(source, PIL.Image.Image):
        return to_rgb(source)
    data, path = _bytes_or_path(source, image_dir, where)
    name = f"image file {os.fspath(path)!r}" if path is not None else "image bytes"
    try:
        with PIL.Image.open(path if data is None else io.BytesIO(data)) as opened:
            opened.load()  # decode now, so a corrupt file fails here and names its row
            image = PIL.ImageOps.exif_transpose(opened)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        # UnidentifiedImageError is an OSError; truncated files raise OSError too.
        raise DataError(f"{where}: {name} is not a readable image ({e})") from None
    return to_rgb(image)


def _bytes_or_path(
    source: ImageSource, image_dir: str | os.PathLike | None, where: str
) -> tuple[bytes | None, Path | None]:
    """``(bytes, None)`` or ``(None, existing path)`` for a non-PIL source."""
    if isinstance(source, PIL.Image.Image):
        return None, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        return None, resolve_image_path(source, image_dir, where)
    if isinstance(source, Mapping) and ("bytes" in source or "path" in source):
        if source.get("bytes") is not None:
            return _bytes_or_path(source["bytes"], image_dir, where)
        if source.get("path") is not None:
            return None, resolve_image_path(source["path"], image_dir, where)
        raise DataError(
            f"{where}: the image dict has neither 'bytes' nor 'path' set: {source!r:.80}"
        )
    raise DataError(
        f"{where}: an image must be {SOURCE_KINDS}, got {type(source).__name__}: {source!r:.80}"
    )
