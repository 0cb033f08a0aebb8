"""Gemma 3 4B/12B/27B come as Gemma3ForConditionalGeneration checkpoints (a SigLIP image
encoder beside the text decoder): tt loads their text decoder as a causal LM, with
transformers' logits on text, and saves it as a Gemma3ForCausalLM that transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import tt_models
from tt_ckpt import read_hf_config
from tt_models import from_hf_config
from tt_recipes import from_pretrained, save_pretrained

TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=128, sliding_window=8, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"], eos_token_id=2, pad_token_id=0,
            bos_token_id=None)  # fmt: skip
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=28, patch_size=14)  # fmt: skip


def test_the_text_decoder_loads_with_transformers_logits_and_saves_as_a_causal_lm(
    tmp_path: Path,
) -> None:
    config = transformers.Gemma3Config(text_config=TEXT, vision_config=VISION,
                                       mm_tokens_per_image=4, image_token_index=500,
                                       boi_token_index=501, eoi_token_index=502)  # fmt: skip
    torch.manual_seed(0)
    transformers.Gemma3ForConditionalGeneration(config).save_pretrained(tmp_path / "mm")
    tokens = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        multimodal = transformers.Gemma3ForConditionalGeneration.from_pretrained(
            tmp_path / "mm", attn_implementation="eager"
        ).eval()
        expected = multimodal(input_ids=tokens).logits
        ours = from_pretrained(tmp_path / "mm")
        torch.testing.assert_close(ours(tokens), expected, atol=1e-4, rtol=0)

        save_pretrained(ours, tmp_path / "text", source_dir=tmp_path / "mm")
        causal = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "text", attn_implementation="eager"
        ).eval()
        assert type(causal).__name__ == "Gemma3ForCausalLM"
        torch.testing.assert_close(causal(tokens).logits, expected, atol=1e-4, rtol=0)


# The Hub's text_config of each size lists only what differs from Gemma3TextConfig's defaults.
HUB_TEXT_CONFIGS = {
    "gemma3_4b": dict(hidden_size=2560, intermediate_size=10_240, num_hidden_layers=34),
    "gemma3_12b": dict(hidden_size=3840, intermediate_size=15_360, num_hidden_layers=48,
                       num_attention_heads=16, num_key_value_heads=8),
    "gemma3_27b": dict(hidden_size=5376, intermediate_size=21_504, num_hidden_layers=62,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                       query_pre_attn_scalar=168),
}  # fmt: skip


@pytest.mark.parametrize("size", list(HUB_TEXT_CONFIGS))
def test_a_sparse_text_config_reads_as_transformers_fills_it_and_as_tt_builds_it(
    size: str, tmp_path: Path
) -> None:
    text = {**HUB_TEXT_CONFIGS[size], "model_type": "gemma3_text", "sliding_window": 1024,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}  # fmt: skip
    top = transformers.Gemma3Config(text_config=text)
    hub_config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                  "text_config": text}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(hub_config))
    ours = from_hf_config(read_hf_config(tmp_path))
    theirs = from_hf_config(top.text_config.to_dict())
    with torch.device("meta"):
        built = getattr(tt_models, size)().config
    assert ours == theirs
    assert ours == built
