"""Image loading, Llama 3.2 Vision's tiling and the vision collator, against transformers.

transformers' Mllama code is the reference (test-only import): its PIL-backend image
processor for pixels, ids and tile masks, and processing_mllama's functions for the
cross-attention mask.
"""

import io

import numpy as np
import PIL.Image
import pytest
import torch
import tt_data
from transformers.models.mllama import image_processing_pil_mllama as hf_image
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)
from tt_data.vision import fit_to_canvas, optimal_canvas, supported_aspect_ratios

IMAGE_ID = 9


def noise(height, width, mode="RGB", seed=0):
    """A random image: noise makes every resampling difference visible."""
    rng = np.random.RandomState(seed + 7 * height + width)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.randint(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[: height // 2, :, 3] = 0  # fully transparent top half, partly transparent rest
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def hf_processor(tile_size, max_num_tiles):
    return hf_image.MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, max_image_tiles=max_num_tiles
    )


# (tile_size, max_num_tiles) -> (height, width, mode) of the images compared.
CASES = {
    (560, 4): [(6, 9, "RGB"), (1500, 300, "RGB"), (230, 1400, "RGB"), (560, 560, "RGB"),
               (2000, 1700, "RGB"), (700, 1130, "RGBA"), (333, 444, "L")],
    (28, 2): [(1, 1, "RGB"), (3, 50, "RGB"), (50, 3, "RGB"), (28, 28, "RGB"), (29, 57, "RGB"),
              (90, 40, "RGB"), (400, 410, "RGB"), (45, 45, "RGBA"), (30, 70, "L"), (60, 20, "LA")],
    (28, 4): [(1, 1, "RGB"), (5, 200, "RGB"), (200, 5, "RGB"), (56, 56, "RGB"), (57, 56, "RGB"),
              (84, 29, "RGB"), (300, 200, "RGB"), (97, 31, "RGBA"), (100, 100, "L")],
}  # fmt: skip
CASE_IDS = [f"{t}px-{n}tiles" for t, n in CASES]


@pytest.mark.parametrize(("tile_size", "max_num_tiles"), list(CASES), ids=CASE_IDS)
def test_tiles_equal_transformers_pil_processor(tile_size, max_num_tiles):
    transform = tt_data.TiledImageTransform(tile_size=tile_size, max_num_tiles=max_num_tiles)
    reference = hf_processor(tile_size, max_num_tiles)
    for height, width, mode in CASES[tile_size, max_num_tiles]:
        image = noise(height, width, mode)
        expected = reference([[image]], return_tensors="pt")
        tiles, (rows, cols), ratio_id = transform(image)
        n = rows * cols
        assert tiles.shape == (n, 3, tile_size, tile_size) and tiles.dtype == torch.float32
        assert expected["num_tiles"] == [[n]], (height, width, mode)
        torch.testing.assert_close(tiles, expected["pixel_values"][0, 0, :n], atol=1e-6, rtol=0)
        assert ratio_id == expected["aspect_ratio_ids"].item()
        mask = [1] * n + [0] * (max_num_tiles - n)
        assert expected["aspect_ratio_mask"][0, 0].tolist() == mask


def test_canvas_choice_equals_transformers_on_a_grid_of_sizes():
    """The grid and the resized size for every (height, width) in a grid around the tiles."""
    sizes = [1, 2, 13, 27, 28, 29, 41, 55, 56, 57, 83, 84, 85, 111, 112, 113, 140, 300]
    compared = 0
    for max_num_tiles in (1, 2, 3, 4, 6):
        assert list(supported_aspect_ratios(max_num_tiles)) == (
            hf_image.get_all_supported_aspect_ratios(max_num_tiles)
        )
        for height in sizes:
            for width in sizes:
                canvas = optimal_canvas(height, width, max_num_tiles, 28)
                expected = hf_image.get_optimal_tiled_canvas(height, width, max_num_tiles, 28)
                assert canvas == tuple(int(x) for x in expected), (height, width, max_num_tiles)
                size = fit_to_canvas(height, width, *canvas, 28)
                assert size == tuple(
                    int(x)
                    for x in hf_image.get_image_size_fit_to_canvas(height, width, *canvas, 28)
                )
                compared += 1
    assert compared == 5 * len(sizes) ** 2


def test_transform_arguments_and_preprocessor_config(tmp_path):
    with pytest.raises(ValueError, match=r"resample 'cubic' is not valid; expected one of"):
        tt_data.TiledImageTransform(resample="cubic")
    with pytest.raises(ValueError, match=r"max_num_tiles must be >= 1, got 0"):
        tt_data.TiledImageTransform(max_num_tiles=0)
    with pytest.raises(ValueError, match=r"mean must be a number or 3 numbers"):
        tt_data.TiledImageTransform(mean=(0.5, 0.5))
    with pytest.raises(TypeError, match=r"takes a PIL image, got str"):
        tt_data.TiledImageTransform()("cat.png")
    # Llama 3.2 Vision's preprocessor_config.json (the values that matter).
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_image_tiles": 2,'
        ' "resample": 3, "rescale_factor": 0.00392156862745098,'
        ' "size": {"height": 28, "width": 28}}'
    )
    transform = tt_data.TiledImageTransform.from_dir(tmp_path)
    assert (transform.tile_size, transform.max_num_tiles) == (28, 2)
    assert transform.resample == PIL.Image.Resampling.BICUBIC
    image = noise(40, 70)
    expected = hf_image.MllamaImageProcessorPil(
        size={"height": 28, "width": 28}, max_image_tiles=2, resample=3
    )([[image]], return_tensors="pt")["pixel_values"][0, 0]
    tiles = transform(image).tiles
    torch.testing.assert_close(tiles, expected[: len(tiles)], atol=1e-6, rtol=0)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_image_sources(tmp_path):
    image = noise(20, 30)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png(image))
    pixels = np.asarray(image)
    sources = {
        "absolute path": str(tmp_path / "imgs" / "a.png"),
        "path object": tmp_path / "imgs" / "a.png",
        "relative to image_dir": "imgs/a.png",
        "bytes": _png(image),
        "HF dict with bytes": {"bytes": _png(image), "path": "ignored.png"},
        "HF dict with path": {"bytes": None, "path": "imgs/a.png"},
        "PIL image": image,
    }
    for name, source in sources.items():
        loaded = tt_data.load_image(source, image_dir=tmp_path, where=name)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), pixels), name


def test_load_image_makes_rgb_as_transformers_does():
    from transformers.image_transforms import convert_to_rgb

    for image in (noise(9, 11, "RGBA"), noise(9, 11, "L"), noise(9, 11, "LA")):
        palette = image.convert("RGB").convert("P")
        palette.info["transparency"] = 3
        for source in (image, palette, _png(image), _png(palette)):
            loaded = tt_data.load_image(source, where="test")
            opened = PIL.Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
            assert np.array_equal(np.asarray(loaded), convert_to_rgb(opened, return_numpy=True))


def test_load_image_turns_exif_orientation_upright():
    image = noise(10, 30)
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # stored rotated: turn 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    loaded = tt_data.load_image(buffer.getvalue(), where="test")
    assert loaded.size == (10, 30)
    assert np.array_equal(np.asarray(loaded), np.asarray(image.transpose(PIL.Image.ROTATE_270)))


def test_load_image_errors_name_where_and_what(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    truncated = _png(noise(50, 50))[:200]
    cases = [
        ("missing.png", r"row 3 of d.json: image file 'missing.png' does not exist \(looked for "
                        r".*/missing.png\)"),
        ("broken.jpg", r"row 3 of d.json: image file '.*broken.jpg' is not a readable image "
                       r"\(cannot identify image file"),
        (truncated, r"row 3 of d.json: image bytes is not a readable image \(.*truncated"),
        (42, r"row 3 of d.json: an image must be a path, bytes, a \{'bytes': ..., 'path': ...\}"
             r" dict or a PIL image, got int: 42"),
        ({"bytes": None, "path": None}, r"neither 'bytes' nor 'path' set"),
        ("https://example.com/cat.png", r"is a URL; tt_data does not download images"),
    ]  # fmt: skip
    for source, message in cases:
        with pytest.raises(tt_data.DataError, match=message):
            tt_data.load_image(source, image_dir=tmp_path, where="row 3 of d.json")


# ---- collation -------------------------------------------------------------------------


def _sample(tokens, tile_counts, t=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "tokens": tokens,
        "labels": [-100 if x == IMAGE_ID else x for x in tokens],
        "images": [torch.randn(k, 3, t, t, generator=gen) for k in tile_counts],
        "aspect_ratio_ids": [k for k in tile_counts],  # any ids; collation copies them
    }


# Token rows (9 = the image token) and the tiles of each image: 0 images, 1, 2 apart,
# 2 consecutive then text, 3 with a consecutive pair in the middle, an image token last.
SAMPLES = [
    ([1, 2, 3, 4], []),
    ([1, 9, 2, 3, 4, 5], [2]),
    ([1, 9, 2, 3, 9, 4, 5, 6], [1, 4]),
    ([1, 9, 9, 2, 3], [3, 1]),
    ([9, 2, 9, 9, 3, 4, 5, 6, 7, 8, 1], [1, 2, 2]),
    ([1, 2, 3, 9], [4]),
]


@pytest.mark.parametrize(
    "rows",
    [[0, 1], [1, 2], [2, 3, 4], [3, 0, 5], [0, 1, 2, 3, 4, 5], [4]],
    ids=["0+1", "1+2", "2+3c+3m", "consecutive+0+last", "all", "one"],
)
def test_image_mask_equals_transformers_cross_attention_mask(rows):
    max_num_tiles = 4
    batch = [_sample(*SAMPLES[r], seed=r) for r in rows]
    out = tt_data.padded_collate_vision(
        batch, pad_id=0, image_token_id=IMAGE_ID, max_num_tiles=max_num_tiles
    )
    b, s = out["tokens"].shape
    # transformers works on the padded rows, as its processor does with padding=True.
    spans = [get_cross_attention_token_mask(row, IMAGE_ID) for row in out["tokens"].tolist()]
    num_tiles = [[len(t) for t in item["images"]] for item in batch]
    expected = convert_sparse_cross_attention_mask_to_dense(spans, num_tiles, max_num_tiles, s)
    n = max(len(item["images"]) for item in batch)
    assert out["image_mask"].shape == (b, s, n, max_num_tiles)
    assert out["image_mask"].dtype == torch.long
    assert torch.equal(out["image_mask"], torch.from_numpy(expected))
    # Tile masks: padding images get their first tile set, as transformers does.
    ratios = [[(1, k) for k in counts] for counts in num_tiles]
    tile_mask = hf_image.build_aspect_ratio_mask_np(ratios, max_num_tiles)
    assert torch.equal(out["aspect_ratio_mask"], torch.from_numpy(tile_mask))
    for i, item in enumerate(batch):
        for j, tiles in enumerate(item["images"]):
            assert torch.equal(out["images"][i, j, : len(tiles)], tiles)
            assert out["images"][i, j, len(tiles) :].abs().sum() == 0
            assert out["aspect_ratio_ids"][i, j] == item["aspect_ratio_ids"][j]
        assert out["images"][i, len(item["images"]) :].abs().sum() == 0
        assert out["aspect_ratio_ids"][i, len(item["images"]) :].abs().sum() == 0
    assert out["images"].shape == (b, n, max_num_tiles, 3, 4, 4)
    assert out["tokens"][0].tolist()[: len(batch[0]["tokens"])] == batch[0]["tokens"]


def test_collated_images_equal_transformers_batch():
    """Real tiles through tt (transform + collate) and through transformers' processor, for
    a batch whose samples hold different numbers of images with different grids."""
    transform = tt_data.TiledImageTransform(tile_size=28, max_num_tiles=4)
    images = [[noise(30, 100)], [noise(90, 20, seed=1), noise(60, 60, seed=2)], [noise(5, 5)]]
    batch = []
    for sample in images:
        tiled = [transform(image) for image in sample]
        batch.append({"tokens": [1] + [IMAGE_ID] * len(sample) + [2, 3], "labels": [1, 2, 3],
                      "images": [t.tiles for t in tiled],
                      "aspect_ratio_ids": [t.aspect_ratio_id for t in tiled]})  # fmt: skip
    out = tt_data.padded_collate_vision(batch, image_token_id=IMAGE_ID, max_num_tiles=4)
    expected = hf_processor(28, 4)(images, return_tensors="pt")
    torch.testing.assert_close(out["images"], expected["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(out["aspect_ratio_ids"], expected["aspect_ratio_ids"])
    assert torch.equal(out["aspect_ratio_mask"], expected["aspect_ratio_mask"])


def test_collate_without_images_and_errors():
    text_only = [{"tokens": [1, 2, 3], "labels": [1, 2, 3]}, _sample([4, 5], [])]
    out = tt_data.padded_collate_vision(text_only, image_token_id=IMAGE_ID, max_num_tiles=4)
    assert sorted(out) == ["labels", "tokens"] and out["tokens"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"batch sample 1 has 1 image token\(s\) \(id 9\) but 2"):
        tt_data.padded_collate_vision(
            [_sample([9, 1], [1]), _sample([1, 9], [1, 1])], image_token_id=9, max_num_tiles=4
        )
    with pytest.raises(ValueError, match=r"batch sample 0, image 0: tiles must be \[1..2, 3, t"):
        tt_data.padded_collate_vision([_sample([9, 1], [3])], image_token_id=9, max_num_tiles=2)
    with pytest.raises(ValueError, match=r"must share one tile shape"):
        tt_data.padded_collate_vision(
            [_sample([9], [1], t=4), _sample([9], [1], t=8)], image_token_id=9, max_num_tiles=2
        )
