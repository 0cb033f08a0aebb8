"""Llama 3.2 Vision (``FusionModel``) against transformers' ``MllamaForConditionalGeneration``:
logits with images (one and two per sample, a padding tile, tokens before the image), the
text-only path, greedy generation with cached image keys/values, config.json round trips and
the published parameter counts."""

from __future__ import annotations

import pytest
import torch
import tt_models
from transformers import MllamaConfig, MllamaForConditionalGeneration
from tt_models import FusionModel, build_model, from_hf_config, generate, to_hf_config
from tt_models_testing import mllama_to_tt_state_dict

VISION = dict(
    hidden_size=32, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
    intermediate_size=64, vision_output_dim=96, image_size=28, patch_size=14, max_num_tiles=2,
    intermediate_layers_indices=[1, 3], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
)  # fmt: skip
TEXT = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1, 3],
    max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
IMAGE_TOKEN = 100  # the first id after the vocabulary: read, never predicted


def _pair(
    vision: dict | None = None, text: dict | None = None
) -> tuple[MllamaForConditionalGeneration, FusionModel]:
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config={**VISION, **(vision or {})},
        text_config={**TEXT, **(text or {})},
        image_token_index=IMAGE_TOKEN,
    )
    hf = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # every gate and norm away from its initial value, so each shows
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    tt = build_model(from_hf_config(config.to_dict())).eval()
    tt.load_state_dict(mllama_to_tt_state_dict(hf.state_dict()))
    return hf, tt


def _batch(tiles: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Row 0: one 2-tile image after 2 text tokens; row 1: a 1-tile image (a padding tile)
    and a 2-tile image, each seen from its image token on."""
    torch.manual_seed(1)
    b, s = 2, 12
    tokens = torch.randint(3, 100, (b, s))
    tokens[0, 2] = tokens[1, 1] = tokens[1, 6] = IMAGE_TOKEN
    images = torch.randn(b, 2, tiles, 3, 28, 28)
    images[1, 0, 1:] = 0
    image_mask = torch.zeros(b, s, 2, tiles, dtype=torch.long)
    image_mask[0, 2:, 0] = 1
    image_mask[1, 1:6, 0, :1] = 1
    image_mask[1, 6:, 1] = 1
    return tokens, {
        "images": images,
        "aspect_ratio_ids": torch.tensor([[3, 0], [1, 2]]),
        "aspect_ratio_mask": torch.tensor([[[1, 1], [1, 0]], [[1, 0], [1, 1]]]),
        "image_mask": image_mask,
    }


def _hf_inputs(images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": images["images"],
        "aspect_ratio_ids": images["aspect_ratio_ids"],
        "aspect_ratio_mask": images["aspect_ratio_mask"],
        "cross_attention_mask": images["image_mask"],
    }


@pytest.mark.parametrize(
    "vision",
    [{}, {"num_global_layers": 0, "intermediate_layers_indices": [0]}],
    ids=["global-layers", "no-global-layers"],
)
@torch.no_grad()
def test_logits_with_images_equal_transformers(vision):
    if "intermediate_layers_indices" in vision:
        vision["vision_output_dim"] = 32 * 2
    hf, tt = _pair(vision)
    tokens, images = _batch()
    want = hf(input_ids=tokens, **_hf_inputs(images)).logits
    got = tt(tokens, **images)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # the images matter, before their token too (transformers' uniform attention there)
    other = tt(tokens, **{**images, "images": images["images"] * 0.5})
    assert (other - got)[:, 2:].abs().max() > 1e-3


@torch.no_grad()
def test_text_only_skips_the_cross_attention_layers_as_transformers_does():
    hf, tt = _pair()
    tokens, _ = _batch()
    tokens[tokens == IMAGE_TOKEN] = 5
    torch.testing.assert_close(tt(tokens), hf(input_ids=tokens).logits, atol=1e-4, rtol=0)


def test_greedy_generation_with_an_image_equals_transformers():
    hf, tt = _pair()
    tokens, images = _batch()
    one = {k: v[:1, :8] if k == "image_mask" else v[:1] for k, v in images.items()}
    with torch.no_grad():
        want = hf.generate(
            input_ids=tokens[:1, :8], **_hf_inputs(one), max_new_tokens=10, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, 8:]  # fmt: skip
    got, _ = generate(tt, tokens[:1, :8], 10, temperature=0, images=one)
    assert got[0].tolist() == want.tolist()


def test_batched_generation_with_images_equals_each_prompt_alone():
    _, tt = _pair()
    tokens, images = _batch()
    prompts = [tokens[0, :8].tolist(), tokens[1, :11].tolist()]  # left-padded together
    images = {**images, "image_mask": images["image_mask"][:, :11]}
    both, _ = generate(tt, prompts, 6, temperature=0, images=images)
    for row, prompt in enumerate(prompts):
        alone, _ = generate(
            tt, [prompt], 6, temperature=0, images={k: v[row : row + 1] for k, v in images.items()}
        )
        assert both[row].tolist() == alone[0].tolist()


def test_images_must_be_padded_to_max_num_tiles():
    _, tt = _pair()
    tokens, images = _batch()
    with pytest.raises(ValueError, match=r"tiles padded to max_num_tiles"):
        tt(tokens, **{**images, "images": images["images"][:, :, :1]})
    with pytest.raises(ValueError, match="image_mask must be"):
        tt(tokens, **{**images, "image_mask": images["image_mask"][:, :5]})


def test_config_json_round_trips_through_transformers():
    _, tt = _pair()
    written = to_hf_config(tt.config)
    assert from_hf_config(written) == tt.config
    # the token ids come from the tokenizer when a checkpoint is saved
    text = {**written["text_config"], "pad_token_id": 0, "bos_token_id": 1}
    again = MllamaForConditionalGeneration(MllamaConfig(**{**written, "text_config": text}))
    assert set(mllama_to_tt_state_dict(again.state_dict())) == set(tt.state_dict())


# The safetensors total of meta-llama/Llama-3.2-11B-Vision on the Hub; the 90B's is what
# transformers builds from its published config.json (checked below), "88.6B" on its card.
PUBLISHED = {"llama3_2_vision_11b": 10_670_220_835, "llama3_2_vision_90b": 88_593_355_323}


@pytest.mark.parametrize("name", PUBLISHED)
def test_vision_builders_have_the_published_parameter_counts(name):
    model = getattr(tt_models, name)(device="meta", dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    with torch.device("meta"):
        reference = MllamaForConditionalGeneration(MllamaConfig(**to_hf_config(model.config)))
    assert sum(p.numel() for p in reference.parameters()) == PUBLISHED[name]
