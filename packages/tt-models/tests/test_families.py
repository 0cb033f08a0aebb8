"""Qwen2/3, Mistral, Gemma, Gemma 2 and Phi-3 equal transformers on the same random weights:
logits (sequences longer than the sliding window), config + weights back to transformers, and
greedy generation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from tt_models import generate, to_hf_config
from tt_models_testing import FAMILIES, tt_to_hf_state_dict

NAMES = list(FAMILIES)


def _tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers_beyond_the_sliding_window(family_pair, name):
    hf, tt = family_pair(name)
    tokens = _tokens(2, 24, seed=1)  # 3x the sliding window of the sliding families
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = tt(tokens)
    assert actual.shape == (2, 24, 256)
    assert (actual - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_hf_config_and_weights_load_back_into_transformers(family_pair, name, tmp_path):
    hf_reference, tt = family_pair(name)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(tt.config)))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == hf_reference.config.model_type
    attn = "eager" if config.model_type == "gemma2" else "sdpa"
    hf = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    state = tt_to_hf_state_dict(tt.state_dict(), config.model_type)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # Tied models legitimately lack lm_head.weight: transformers ties it to the embedding.
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    tokens = _tokens(2, 20, seed=4)
    with torch.no_grad():
        assert (hf(tokens).logits - tt(tokens)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers(family_pair, name):
    hf, tt = family_pair(name)
    # Equal-length prompts: transformers slides its window over cache slots, padding included,
    # whereas tt slides over positions, so the two agree on unpadded rows.
    prompts = _tokens(2, 6, seed=5)
    tokens, _ = generate(tt, prompts, 14, temperature=0)
    expected = hf.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=14,
        do_sample=False,
        pad_token_id=0,
    )[:, 6:]
    assert torch.equal(tokens, expected)


def test_packed_documents_slide_by_their_own_positions(family_pair):
    from tt_models import block_causal_mask

    _, tt = family_pair("mistral")
    docs = [_tokens(1, 13, seed=6)[0], _tokens(1, 11, seed=7)[0]]  # both longer than window 8
    packed = torch.cat(docs)[None]
    input_pos = torch.cat([torch.arange(13), torch.arange(11)])[None]
    mask = block_causal_mask(torch.tensor([[0] * 13 + [1] * 11]))
    with torch.no_grad():
        together = tt(packed, mask=mask, input_pos=input_pos)[0]
        alone = torch.cat([tt(doc[None])[0] for doc in docs])
    assert (together - alone).abs().max() <= 1e-4


def test_logits_from_hidden_applies_the_final_softcap(family_pair):
    hf, tt = family_pair("gemma2")
    tokens = _tokens(2, 10, seed=8)
    with torch.no_grad():
        hidden = tt(tokens, return_hidden=True)
        torch.testing.assert_close(tt.logits_from_hidden(hidden), tt(tokens))
        # Scaled up so that the raw logits exceed the cap of 3.
        capped = tt.logits_from_hidden(hidden * 100)
        raw = (hidden * 100) @ tt.output_weight().T
    assert capped.abs().max() <= 3.0 < raw.abs().max()
    torch.testing.assert_close(capped, 3.0 * torch.tanh(raw / 3.0))
