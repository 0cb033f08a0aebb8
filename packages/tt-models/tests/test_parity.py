"""Logits of tt_models equal transformers' LlamaForCausalLM on the same random weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, LlamaForCausalLM
from tt_models import padded_mask_and_positions, to_hf_config
from tt_models_testing import LLAMA3_ROPE, tt_to_hf_state_dict

CONFIGS = {
    "gqa_untied": dict(),
    "gqa_tied_llama3_rope_attn_bias": dict(
        tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE, attention_bias=True
    ),
    "mqa_mlp_bias_wide_heads": dict(num_key_value_heads=1, head_dim=32, mlp_bias=True),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_logits_match_transformers(llama_pair, overrides):
    hf, tt = llama_pair(**overrides)
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = tt(tokens)
    assert actual.shape == (3, 24, 256)
    assert (actual - expected).abs().max() <= 1e-4


def test_tied_model_has_no_output_key_and_shares_weight(llama_pair):
    _, tt = llama_pair(tie_word_embeddings=True)
    assert "output.weight" not in tt.state_dict()
    assert tt.output_weight() is tt.tok_embeddings.weight


def test_left_padded_batch_matches_unpadded_rows(llama_pair):
    hf, tt = llama_pair(rope_parameters=LLAMA3_ROPE)
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 256, (n,), generator=gen) for n in (12, 7, 3)]
    padded = torch.zeros(3, 12, dtype=torch.long)
    padding_mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, row in enumerate(rows):
        padded[i, 12 - len(row) :] = row
        padding_mask[i, 12 - len(row) :] = True
    mask, input_pos = padded_mask_and_positions(padding_mask)
    with torch.no_grad():
        tt_padded = tt(padded, mask=mask, input_pos=input_pos)
        hf_padded = hf(padded, attention_mask=padding_mask.long(), position_ids=input_pos).logits
        for i, row in enumerate(rows):
            alone = tt(row[None])[0]
            real = tt_padded[i, 12 - len(row) :]
            assert (real - alone).abs().max() <= 1e-4
            assert (real - hf_padded[i, 12 - len(row) :]).abs().max() <= 1e-4
            assert (alone - hf(row[None]).logits[0]).abs().max() <= 1e-4


def test_return_hidden_projects_to_logits(llama_pair):
    _, tt = llama_pair(tie_word_embeddings=True)
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = tt(tokens, return_hidden=True)
        logits = tt(tokens)
    assert hidden.shape == (2, 10, 64)
    torch.testing.assert_close(hidden @ tt.output_weight().T, logits)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_to_hf_config_loads_in_transformers_with_same_logits(llama_pair, tmp_path, overrides):
    _, tt = llama_pair(**overrides)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(tt.config)))
    config = AutoConfig.from_pretrained(tmp_path)
    hf = LlamaForCausalLM(config).eval()
    missing, unexpected = hf.load_state_dict(tt_to_hf_state_dict(tt.state_dict()), strict=False)
    # Tied models legitimately lack lm_head.weight: transformers ties it to the embedding.
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    assert type(config).__name__ == "LlamaConfig" and config.architectures == ["LlamaForCausalLM"]
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf(tokens).logits - tt(tokens)).abs().max() <= 1e-4
