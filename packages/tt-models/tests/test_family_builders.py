"""Builders of the published Qwen2.5, Qwen3, Mistral, Gemma, Gemma 2/3, Phi-3/4 and SmolLM2 sizes,
built on meta: exact parameter counts, the same count as transformers' model of the config we
write, and config.json round trips."""

from __future__ import annotations

import json

import pytest
import torch
import tt_models
from transformers import AutoConfig, AutoModelForCausalLM
from tt_models import from_hf_config, to_hf_config

# Exact parameter counts of the published checkpoints (the safetensors totals on the model
# pages; Phi-3 mini's also in keras-hub's preset metadata). Tied models count the embedding once.
PUBLISHED = {
    "qwen2_5_0_5b": 494_032_768,
    "qwen2_5_1_5b": 1_543_714_304,
    "qwen2_5_3b": 3_085_938_688,
    "qwen2_5_7b": 7_615_616_512,
    "qwen2_5_14b": 14_770_033_664,
    "qwen2_5_32b": 32_763_876_352,
    "qwen2_5_72b": 72_706_203_648,
    "qwen3_0_6b": 596_049_920,
    "qwen3_1_7b": 1_720_574_976,
    "qwen3_4b": 4_022_468_096,
    "qwen3_8b": 8_190_735_360,
    "qwen3_14b": 14_768_307_200,
    "qwen3_32b": 32_762_123_264,
    "mistral_7b": 7_241_732_096,
    "gemma_2b": 2_506_172_416,
    "gemma_7b": 8_537_680_896,
    "gemma2_2b": 2_614_341_888,
    "gemma2_9b": 9_241_705_984,
    "gemma2_27b": 27_227_128_320,
    "gemma3_1b": 999_885_952,
    "qwen3_moe_30b_a3b": 30_532_122_624,
    "qwen3_moe_235b_a22b": 235_093_634_560,
    "mixtral_8x7b": 46_702_792_704,
    "phi3_mini": 3_821_079_552,
    "phi4_14b": 14_659_507_200,
    "smollm2_135m": 134_515_008,
    "smollm2_360m": 361_821_120,
    "smollm2_1_7b": 1_711_376_384,
}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_equals_the_published_one(name):
    model = getattr(tt_models, name)(device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    assert _n_params(model) == PUBLISHED[name]


@pytest.mark.parametrize("name", PUBLISHED)
def test_config_json_round_trips(name):
    cfg = getattr(tt_models, name)(device="meta").config
    assert from_hf_config(to_hf_config(cfg)) == cfg


# The smallest size of each family: transformers builds the same architecture from our config.
SMALLEST = ["qwen2_5_0_5b", "qwen3_0_6b", "mistral_7b", "gemma_2b", "gemma2_2b", "gemma3_1b",
            "phi3_mini", "qwen3_moe_30b_a3b", "mixtral_8x7b"]  # fmt: skip


@pytest.mark.parametrize("name", SMALLEST)
def test_transformers_builds_the_same_parameter_count(name, tmp_path):
    cfg = getattr(tt_models, name)(device="meta").config
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(cfg)))
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    assert _n_params(hf) == PUBLISHED[name]


# Parameters a token uses in the mixtures of experts (the "A3B"/"A22B" of their names; Mixtral's
# model card: 12.9B active), from the same config: attention, router and top_k experts.
ACTIVE = {"qwen3_moe_30b_a3b": 3_353_032_704, "qwen3_moe_235b_a22b": 22_190_763_520,
          "mixtral_8x7b": 12_879_925_248}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_mixture_of_experts_active_parameters(name):
    model = getattr(tt_models, name)(device="meta")
    assert tt_models.active_parameters(model) == ACTIVE[name]


# Gemma 3 4B/12B/27B are published as multimodal models (the safetensors totals): their text
# decoder, the same SigLIP image encoder in each, and a projection from its 1152 features to the
# decoder's width (with an RMSNorm of 1152).
GEMMA3_MULTIMODAL = {"gemma3_4b": 4_300_079_472, "gemma3_12b": 12_187_325_040,
                     "gemma3_27b": 27_432_406_640}  # fmt: skip
SIGLIP_ENCODER = 416_866_032


@pytest.mark.parametrize("name", sorted(GEMMA3_MULTIMODAL))
def test_gemma3_text_decoders_complete_the_published_multimodal_counts(name):
    model = getattr(tt_models, name)(device="meta")
    projector = 1152 * model.config.dim + 1152
    assert _n_params(model) + SIGLIP_ENCODER + projector == GEMMA3_MULTIMODAL[name]


def test_family_switches_of_the_builders():
    gemma2 = tt_models.gemma2_27b(device="meta")
    cfg = gemma2.config
    assert cfg.layer_types[:3] == ("sliding_attention", "full_attention", "sliding_attention")
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (50.0, 30.0, 4096)
    assert gemma2.layers[0].attn.scale == 144**-0.5 and gemma2.final_softcap == 30.0
    qwen3 = tt_models.qwen3_0_6b(device="meta")
    assert qwen3.layers[0].attn.q_norm.weight.shape == (128,)
    qwen2 = tt_models.qwen2_5_0_5b(device="meta").layers[0].attn
    assert qwen2.q_proj.bias is not None and qwen2.o_proj.bias is None
    assert tt_models.mistral_7b(device="meta").config.layer_window(31) == 4096
    assert tt_models.smollm2_135m(device="meta").config.model_type == "llama"
    gemma3 = tt_models.gemma3_27b(device="meta")
    cfg = gemma3.config
    assert cfg.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    assert (cfg.local_rope_base, cfg.rope_base, cfg.rope_scaling["factor"]) == (1e4, 1e6, 8.0)
    assert gemma3.layers[0].attn.scale == 168**-0.5 and gemma3.local_rope.base == 1e4
    assert gemma3.layers[0].attn.q_norm.weight.shape == (128,) and gemma3.final_softcap is None
