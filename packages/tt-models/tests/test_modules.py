"""Building blocks against hand-computed values and transformers' RoPE initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from tt_models import DecoderConfig, RMSNorm, RotaryEmbedding, apply_rope, rope_inv_freq
from tt_models_testing import LLAMA3_ROPE


def test_rms_norm_by_hand():
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    out = norm(torch.tensor([[3.0, 4.0]]))  # rms = sqrt((9 + 16) / 2)
    rms = math.sqrt(12.5)
    torch.testing.assert_close(out, torch.tensor([[3.0 / rms, 8.0 / rms]]))
    assert norm(torch.ones(1, 2, dtype=torch.bfloat16)).dtype == torch.float32  # fp32 weight wins


def test_inverse_frequencies_by_hand():
    torch.testing.assert_close(rope_inv_freq(4, 100.0), torch.tensor([1.0, 0.1]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_llama3_scaled_frequencies_match_transformers(head_dim):
    config = LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, rope_parameters=LLAMA3_ROPE
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    actual = rope_inv_freq(head_dim, 500_000.0, scaling)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # All three bands are exercised: kept, divided by the factor, and interpolated.
    plain = rope_inv_freq(head_dim, 500_000.0)
    ratio = plain / actual
    assert (ratio == 1).any() and (ratio == 8).any() and ((ratio > 1) & (ratio < 8)).any()


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=8, base=10_000.0)
    q, k = torch.randn(2, 1, 1, 8, generator=torch.Generator().manual_seed(0))
    scores = []
    for shift in (0, 37):
        cos, sin = rope(torch.tensor([[3 + shift, 10 + shift]]))
        q_rot = apply_rope(q[None].expand(1, 1, 2, 8), cos, sin)[0, 0, 0]
        k_rot = apply_rope(k[None].expand(1, 1, 2, 8), cos, sin)[0, 0, 1]
        scores.append(q_rot @ k_rot)
    torch.testing.assert_close(scores[0], scores[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=0), "dim=0 must be a positive integer"),
        (dict(n_kv_heads=3), "n_heads=4 must be a multiple of n_kv_heads=3"),
        (dict(head_dim=7), "head_dim=7 must be even"),
        (dict(norm_eps=0.0), "norm_eps=0.0 and rope_base=10000.0 must both be > 0"),
        (
            dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}),
            r"rope_scaling: rope_type='yarn' is not supported; supported scaling types: \['llama3', 'linear'\]",
        ),
        (
            dict(rope_scaling={**LLAMA3_ROPE, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
            "high_freq_factor=1.0 must be greater than low_freq_factor=4.0",
        ),
    ],
)
def test_decoder_config_errors(kwargs, message):
    args = dict(vocab_size=10, dim=16, n_layers=1, n_heads=4, hidden_dim=8)
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{**args, **kwargs})


def test_rms_norm_with_gemma_offset_by_hand_and_identity_init():
    norm = RMSNorm(2, eps=0.0, offset=1.0)
    assert torch.equal(norm.weight, torch.zeros(2))  # scale 1 + 0: the identity
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, -0.5]))
    rms = math.sqrt(12.5)
    expected = torch.tensor([[2 * 3.0 / rms, 0.5 * 4.0 / rms]])
    torch.testing.assert_close(norm(torch.tensor([[3.0, 4.0]])), expected)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.zeros(2))


def test_feed_forward_geglu_uses_tanh_gelu_and_rejects_unknown_activation():
    from tt_models import FeedForward

    torch.manual_seed(0)
    mlp = FeedForward(4, 6, activation="gelu_tanh")
    x = torch.randn(3, 4)
    gate = torch.nn.functional.gelu(mlp.gate_proj(x), approximate="tanh")
    torch.testing.assert_close(mlp(x), mlp.down_proj(gate * mlp.up_proj(x)))
    with pytest.raises(ValueError, match=r"activation='relu' is not supported; valid: "):
        FeedForward(4, 6, activation="relu")


def test_softcapped_attention_reduces_to_sdpa_when_the_cap_is_huge():
    from tt_models import MultiHeadAttention

    torch.manual_seed(0)
    plain = MultiHeadAttention(32, 4, 2, 8, scale=0.3)
    capped = MultiHeadAttention(32, 4, 2, 8, scale=0.3, softcap=1e6)
    capped.load_state_dict(plain.state_dict())
    x, pos = torch.randn(2, 5, 32), torch.arange(5).expand(2, 5)
    rope = RotaryEmbedding(8, 10_000.0)(pos)
    with torch.no_grad():
        torch.testing.assert_close(capped(x, rope), plain(x, rope), rtol=1e-5, atol=1e-5)
