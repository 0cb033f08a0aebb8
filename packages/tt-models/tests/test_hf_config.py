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
        ({**BASE, "model_type": "gpt2"}, r"model_type='gpt2' is not supported; .*\['llama'\]"),
        ({"vocab_size": 3}, r"model_type=None is not supported"),
        (
            {k: v for k, v in BASE.items() if k != "intermediate_size"},
            r"lacks keys \['intermediate_size'\]",
        ),
        ({**BASE, "hidden_act": "gelu"}, r"hidden_act='gelu' is not supported .* only 'silu'"),
        (
            {**BASE, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}},
            r"config.json rope_parameters: rope_type='yarn' is not supported; .*\['llama3'\]",
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
