"""from_hf_config / to_hf_config: both config.json forms, errors, round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from tt_models import DecoderConfig, from_hf_config, llama3_2_1b, to_hf_config
from tt_models_testing import LLAMA3_ROPE

BASE = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
)
SCALING = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}


def test_transformers_5_and_older_rope_forms_agree():
    new = from_hf_config({**BASE, "rope_parameters": LLAMA3_ROPE})
    old = from_hf_config({**BASE, "rope_theta": 500_000.0, "rope_scaling": SCALING})
    legacy_type_key = {**SCALING, "type": "llama3"}
    del legacy_type_key["rope_type"]
    oldest = from_hf_config({**BASE, "rope_theta": 500_000.0, "rope_scaling": legacy_type_key})
    assert new == old == oldest
    assert new.rope_base == 500_000.0 and new.rope_scaling == {**SCALING, "factor": 8.0}


def test_reads_every_field_of_a_transformers_config():
    hf = LlamaConfig(
        **{k: v for k, v in BASE.items() if k != "model_type"},
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1234.0},
    )
    assert from_hf_config(hf.to_dict()) == DecoderConfig(
        vocab_size=128,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        hidden_dim=96,
        max_seq_len=512,
        norm_eps=1e-6,
        rope_base=1234.0,
        tie_embeddings=True,
        attn_bias=True,
        mlp_bias=True,
    )


def test_defaults_follow_transformers():
    cfg = from_hf_config(BASE)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.rope_base, cfg.rope_scaling) == (
        4,
        16,
        10_000.0,
        None,
    )
    assert (cfg.norm_eps, cfg.max_seq_len, cfg.tie_embeddings) == (1e-6, 2048, False)


def test_to_hf_config_writes_transformers_5_fields():
    hf = to_hf_config(llama3_2_1b(device="meta").config, dtype=torch.bfloat16)
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["model_type"] == "llama"
    assert hf["dtype"] == "bfloat16" and hf["tie_word_embeddings"] is True
    assert hf["rope_parameters"] == {
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {**BASE, "model_type": "gpt2"},
            r"model_type='gpt2' is not supported; .*\['llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'gemma3_text', 'qwen3_moe', 'qwen2_moe', 'mixtral', 'phi3', 'mllama'\]",
        ),
        ({"vocab_size": 3}, r"model_type=None is not supported"),
        (
            {k: v for k, v in BASE.items() if k != "intermediate_size"},
            r"lacks keys \['intermediate_size'\]",
        ),
        (
            {**BASE, "hidden_act": "gelu"},
            r"hidden_act='gelu' is not supported for model_type 'llama'; valid: \['gelu_pytorch_tanh', 'silu'\]",
        ),
        (
            {**BASE, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}},
            r"config.json rope_parameters: rope_type='yarn' is not supported; .*\['llama3', 'linear'\]",
        ),
        (
            {**BASE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"config.json rope_scaling: llama3 rope scaling is missing \['low_freq_factor'",
        ),
        (
            {**BASE, "num_key_value_heads": 3},
            r"n_heads=4 must be a multiple of n_kv_heads=3",
        ),
    ],
)
def test_from_hf_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config(config)


@settings(max_examples=40, deadline=None)
@given(
    n_kv_heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([None, 8, 32]),
    tie=st.booleans(),
    attn_bias=st.booleans(),
    mlp_bias=st.booleans(),
    factor=st.one_of(st.none(), st.floats(1.5, 64)),
    rope_base=st.floats(100.0, 1e6),
    norm_eps=st.sampled_from([1e-5, 1e-6]),
)
def test_round_trip(n_kv_heads, head_dim, tie, attn_bias, mlp_bias, factor, rope_base, norm_eps):
    scaling = None if factor is None else {**SCALING, "factor": factor}
    cfg = DecoderConfig(
        vocab_size=100,
        dim=64,
        n_layers=3,
        n_heads=4,
        hidden_dim=80,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        norm_eps=norm_eps,
        rope_base=rope_base,
        rope_scaling=scaling,
        tie_embeddings=tie,
        attn_bias=attn_bias,
        mlp_bias=mlp_bias,
    )
    assert from_hf_config(to_hf_config(cfg)) == cfg


# Shaped like the published config.json files (transformers 4 form), shrunk.
QWEN2_5_JSON = {
    **BASE,
    "model_type": "qwen2",
    "num_key_value_heads": 2,
    "rope_theta": 1_000_000.0,
    "sliding_window": 131_072,
    "use_sliding_window": False,
    "max_window_layers": 1,
    "tie_word_embeddings": True,
}
GEMMA_JSON = {**BASE, "model_type": "gemma", "head_dim": 32, "hidden_act": "gelu"}
GEMMA2_JSON = {
    **BASE,
    "model_type": "gemma2",
    "num_hidden_layers": 3,
    "head_dim": 32,
    "hidden_activation": "gelu_pytorch_tanh",
    "sliding_window": 4096,
    "query_pre_attn_scalar": 144,
}


def test_qwen2_sliding_window_is_off_unless_use_sliding_window():
    cfg = from_hf_config(QWEN2_5_JSON)
    assert cfg.model_type == "qwen2" and cfg.qkv_bias and not cfg.attn_bias
    assert cfg.sliding_window is None and cfg.tie_embeddings and cfg.rope_base == 1e6
    on = from_hf_config({**QWEN2_5_JSON, "use_sliding_window": True})
    # Layers from max_window_layers on slide, as in transformers.
    assert on.sliding_window == 131_072
    assert on.layer_types == ("full_attention", "sliding_attention")


def test_gemma_legacy_gelu_means_tanh_gelu_and_ties_by_default():
    cfg = from_hf_config(GEMMA_JSON)
    assert (cfg.activation, cfg.norm_offset, cfg.scale_embeddings) == ("gelu_tanh", 1.0, True)
    assert cfg.tie_embeddings and cfg.head_dim == 32 and cfg.norm_eps == 1e-6


def test_gemma2_defaults_and_alternating_layers():
    cfg = from_hf_config(GEMMA2_JSON)
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.query_pre_attn_scalar) == (50.0, 30.0, 144)
    assert cfg.post_norms and cfg.layer_types == (
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    )
    uncapped = from_hf_config({**GEMMA2_JSON, "attn_logit_softcapping": None})
    assert uncapped.attn_softcap is None


GEMMA3_OLD_JSON = {  # as transformers 4.5x wrote Gemma 3: top-level RoPE keys and a pattern
    **BASE, "model_type": "gemma3_text", "num_hidden_layers": 7, "head_dim": 32,
    "sliding_window": 512, "sliding_window_pattern": 6, "rope_theta": 1_000_000,
    "rope_local_base_freq": 10_000, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
}  # fmt: skip


def test_gemma3_reads_both_rope_forms_and_its_layer_pattern():
    old = from_hf_config(GEMMA3_OLD_JSON)
    assert old.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")
    assert (old.rope_base, old.local_rope_base, old.rope_scaling) == (
        1e6, 1e4, {"rope_type": "linear", "factor": 8.0})  # fmt: skip
    assert old.qk_norm and old.post_norms and old.attn_softcap is None
    assert old.query_pre_attn_scalar == 256 and old.final_softcap is None
    written = to_hf_config(old)
    assert written["rope_parameters"] == {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    assert from_hf_config(written) == old


def test_phi3_and_mistral_slide_in_every_layer():
    phi3 = from_hf_config({**BASE, "model_type": "phi3", "sliding_window": 2047})
    assert phi3.sliding_window == 2047 and phi3.layer_types is None and phi3.norm_eps == 1e-5
    mistral = from_hf_config({**BASE, "model_type": "mistral", "sliding_window": None})
    assert mistral.sliding_window is None and mistral.layer_window(1) is None


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {**BASE, "model_type": "phi3", "rope_scaling": {"type": "longrope", "factor": 32}},
            r"config.json rope_scaling: rope_type='longrope' is not supported; .*\['llama3', 'linear'\]",
        ),
        (
            {**GEMMA3_OLD_JSON, "rope_scaling": {"rope_type": "linear", "factor": 0}},
            r"config.json rope_scaling: linear rope scaling needs a factor > 0, got 0",
        ),
        (
            {
                **GEMMA3_OLD_JSON,
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0},
                },
            },
            r"rope_parameters.sliding_attention: rope_type='linear' is not supported",
        ),
        (
            {**BASE, "model_type": "phi3", "partial_rotary_factor": 0.75},
            r"partial_rotary_factor=0.75 is not supported; only 1.0",
        ),
        (
            {**GEMMA2_JSON, "hidden_activation": "relu"},
            r"hidden_activation='relu' is not supported for model_type 'gemma2'; valid: "
            r"\['gelu', 'gelu_pytorch_tanh', 'silu'\]",
        ),
        (
            {**GEMMA2_JSON, "layer_types": ["full_attention"]},
            r"layer_types must list one of .* for each of the n_layers=3 layers",
        ),
    ],
)
def test_family_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config(config)


def test_to_hf_config_refuses_switches_the_family_cannot_express():
    cfg = DecoderConfig(vocab_size=8, dim=8, n_layers=1, n_heads=2, hidden_dim=8, qk_norm=True)
    with pytest.raises(ValueError, match=r"model_type 'llama' cannot express qk_norm=True"):
        to_hf_config(cfg)
    sliding = DecoderConfig(
        vocab_size=8, dim=8, n_layers=2, n_heads=2, hidden_dim=8, model_type="mistral",
        sliding_window=4, layer_types=("full_attention", "sliding_attention"),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"'mistral' slides in every layer or none"):
        to_hf_config(sliding)
    with pytest.raises(ValueError, match=r"model_type='gpt2' is not supported"):
        to_hf_config(DecoderConfig(8, 8, 1, 2, 8, model_type="gpt2"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "activation",
            "relu",
            r"activation='relu' is not supported; valid: \['silu', 'gelu_tanh'\]",
        ),
        ("sliding_window", 0, r"sliding_window=0 must be a positive integer"),
        ("attn_softcap", -1.0, r"attn_softcap=-1.0 must be > 0 or None"),
    ],
)
def test_decoder_config_rejects_bad_family_switches(field, value, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(vocab_size=8, dim=8, n_layers=1, n_heads=2, hidden_dim=8, **{field: value})
