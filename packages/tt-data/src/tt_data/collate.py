"""Collators: lists of dataset items -> batched tensors.

- ``padded_collate_sft``: ``{"tokens" [b, s], "labels" [b, s]}`` right-padded with pad_id/-100.
- ``padded_collate_preference``: the same keys with ``2b`` rows, chosen rows then rejected.
- ``padded_collate_packed``: packed rows -> ``tokens``, ``labels``, ``input_pos`` and
  ``document_ids`` [b, s] (-1 on padding); ``tt_models.block_causal_mask(document_ids)`` is the
  mask ``TransformerDecoder.forward(tokens, mask=..., input_pos=...)`` takes.
- ``padded_collate_vision``: SFT keys plus tiled images and their masks (Llama 3.2 Vision).
"""

from __future__ import annotations

from typing import Any

import torch

from tt_data.labels import IGNORE_INDEX


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad int lists into a ``[len(rows), longest]`` long tensor."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def padded_collate_sft(
    batch: list[dict[str, list[int]]],
    pad_id: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Pad ``tokens`` with ``pad_id`` and ``labels`` with ``ignore_index``: ``[b, s]`` each."""
    return {
        "tokens": _pad([item["tokens"] for item in batch], pad_id),
        "labels": _pad([item["labels"] for item in batch], ignore_index),
    }


def padded_collate_preference(
    batch: list[dict[str, list[int]]],
    pad_id: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """One ``[2b, s]`` batch: rows ``0..b-1`` chosen, rows ``b..2b-1`` the matching rejected."""
    order = [("chosen_tokens", "chosen_labels"), ("rejected_tokens", "rejected_labels")]
    tokens = [item[t] for t, _ in order for item in batch]
    labels = [item[lab] for _, lab in order for item in batch]
    return {"tokens": _pad(tokens, pad_id), "labels": _pad(labels, ignore_index)}


def padded_collate_packed(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Stack packed rows (all ``max_seq_len`` long). The attention mask is the model's to
    build from ``document_ids`` (``tt_models.block_causal_mask``): a ``[b, s, s]`` mask made
    here would cost ``s`` times the batch's memory to move to the device."""
    keys = ("tokens", "labels", "input_pos", "document_ids")
    lengths = {len(item["tokens"]) for item in batch}
    if len(lengths) > 1:
        raise ValueError(f"packed rows must share one length, got lengths {sorted(lengths)}")
    return {k: torch.tensor([item[k] for item in batch], dtype=torch.long) for k in keys}


def padded_collate_vision(
    batch: list[dict[str, Any]],
    pad_id: int = 0,
    *,
    image_token_id: int,
    max_num_tiles: int,
    ignore_index: int = IGNORE_INDEX,
    tile_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Batch multimodal items (``multimodal_chat_dataset``, ``vqa_dataset``); ``n`` is the
    most images any sample has:

    - ``tokens``, ``labels`` ``[b, s]``: right-padded as in ``padded_collate_sft``;
    - ``images`` ``[b, n, max_num_tiles, 3, t, t]`` float32, zeros for padding tiles/images;
    - ``aspect_ratio_ids`` ``[b, n]`` long, 0 for padding images;
    - ``aspect_ratio_mask`` ``[b, n, max_num_tiles]`` long: 1 on an image's real tiles; a
      padding image has its first tile set, as transformers' ``MllamaImageProcessor`` does;
    - ``image_mask`` ``[b, s, n, max_num_tiles]`` long: 1 where token ``i`` may attend to a
      tile of image ``j`` (transformers' ``cross_attention_mask``): from image ``j``'s token
      up to the next image token; an image token directly followed by another takes that
      one's end (the text after a run of image tokens sees all of them); the last image
      reaches the end of the padded row. Text before the first image token sees no image.

    A batch in which no sample has an image has only ``tokens`` and ``labels``: the model
    then runs as a text model. With ``tile_size`` it instead has one padding image slot of
    ``[3, tile_size, tile_size]`` tiles that no token sees (a sharded model must run its image
    layers on every process alike). Items without an ``images`` key count as having none.
    """
    out = padded_collate_sft(batch, pad_id, ignore_index)
    images = [list(item.get("images", ())) for item in batch]
    ratio_ids = [list(item.get("aspect_ratio_ids", ())) for item in batch]
    n = max(len(row) for row in images)
    if n == 0 and tile_size is None:
        return out
    if image_token_id == pad_id:
        raise ValueError(f"image_token_id and pad_id are both {pad_id}; they must differ")
    if n == 0:
        n, tile_shape = 1, (3, tile_size, tile_size)
    else:
        tile_shape = _tile_shape(images, ratio_ids, max_num_tiles)
    b, s = out["tokens"].shape
    pixels = torch.zeros(b, n, max_num_tiles, *tile_shape, dtype=torch.float32)
    ids = torch.zeros(b, n, dtype=torch.long)
    tile_mask = torch.zeros(b, n, max_num_tiles, dtype=torch.long)
    tile_mask[:, :, 0] = 1
    image_mask = torch.zeros(b, s, n, max_num_tiles, dtype=torch.long)
    for i, row in enumerate(images):
        positions = (out["tokens"][i] == image_token_id).nonzero().flatten().tolist()
        if len(positions) != len(row):
            raise ValueError(
                f"batch sample {i} has {len(positions)} image token(s) (id {image_token_id}) "
                f"but {len(row)} image(s); every image needs exactly one image token"
            )
        for j, (tiles, (start, end)) in enumerate(zip(row, image_spans(positions, s))):
            k = tiles.shape[0]
            pixels[i, j, :k] = tiles
            ids[i, j] = ratio_ids[i][j]
            tile_mask[i, j, :k] = 1
            image_mask[i, start:end, j, :k] = 1
    out.update(images=pixels, aspect_ratio_ids=ids, aspect_ratio_mask=tile_mask)
    out["image_mask"] = image_mask
    return out


def image_spans(positions: list[int], length: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` tokens that attend to each image, whose image token is at
    ``positions[j]``: up to the next image token, or that token's own end when it directly
    follows (runs of image tokens share one end); the last image's end is ``length``."""
    ends = [*positions[1:], length]
    for j in range(len(positions) - 2, -1, -1):
        if ends[j] == positions[j] + 1:  # the next token is an image token too
            ends[j] = ends[j + 1]
    return list(zip(positions, ends))


def _tile_shape(
    images: list[list[torch.Tensor]], ratio_ids: list[list[int]], max_num_tiles: int
) -> tuple[int, ...]:
    """The common ``(3, t, t)`` of every image's tiles, checking each item's images."""
    shapes = set()
    for i, (row, ids) in enumerate(zip(images, ratio_ids)):
        if len(ids) != len(row):
            raise ValueError(
                f"batch sample {i} has {len(row)} image(s) but {len(ids)} aspect_ratio_ids"
            )
        for j, tiles in enumerate(row):
            if tiles.dim() != 4 or not 1 <= tiles.shape[0] <= max_num_tiles:
                raise ValueError(
                    f"batch sample {i}, image {j}: tiles must be [1..{max_num_tiles}, 3, t, t] "
                    f"(max_num_tiles={max_num_tiles}), got {tuple(tiles.shape)}"
                )
            shapes.add(tuple(tiles.shape[1:]))
    if len(shapes) > 1:
        raise ValueError(f"images in a batch must share one tile shape, got {sorted(shapes)}")
    return shapes.pop()
