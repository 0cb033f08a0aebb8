"""KV-cache decoding equals the full forward; cache misuse raises clear errors."""

from __future__ import annotations

import pytest
import torch
from tt_models import KVCache
from tt_models_testing import tiny_tt_model


def _positions(start: int, stop: int, batch: int = 2) -> torch.Tensor:
    return torch.arange(start, stop).expand(batch, -1)


def test_token_by_token_decoding_equals_full_forward():
    model = tiny_tt_model()
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(batch_size=2, max_seq_len=32)
        steps = [model(tokens[:, i : i + 1], input_pos=_positions(i, i + 1)) for i in range(20)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_prefill_then_decode_and_reset_reuse_the_cache():
    model = tiny_tt_model()
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(2, 16)
        for _ in range(2):  # the second round proves reset_caches leaves nothing behind
            model.reset_caches()
            prefill = model(tokens[:, :8], input_pos=_positions(0, 8))
            rest = [model(tokens[:, i : i + 1], input_pos=_positions(i, i + 1)) for i in (8, 9)]
            assert (torch.cat([prefill, *rest], dim=1) - full[:, :10]).abs().max() <= 1e-5


def test_cache_state_switches():
    model = tiny_tt_model()
    assert not model.caches_are_enabled()
    model.setup_caches(1, 8, dtype=torch.bfloat16)
    assert model.caches_are_enabled()
    assert model.layers[0].attn.kv_cache.k_cache.shape == (1, 2, 8, 16)
    assert model.layers[0].attn.kv_cache.k_cache.dtype == torch.bfloat16
    assert "layers.0.attn.kv_cache.k_cache" not in model.state_dict()
    model.remove_caches()
    assert not model.caches_are_enabled()
    with pytest.raises(RuntimeError, match="no KV-caches are set up; call setup_caches"):
        model.reset_caches()


def test_kv_cache_writes_each_row_at_its_own_positions():
    cache = KVCache(batch_size=2, max_seq_len=4, n_kv_heads=1, head_dim=2, dtype=torch.float32)
    k = torch.arange(8.0).view(2, 1, 2, 2)  # [b, heads, s, head_dim]
    k_all, v_all = cache.update(torch.tensor([[0, 1], [2, 3]]), k, -k)
    assert torch.equal(k_all[0, 0, :2], k[0, 0]) and torch.equal(k_all[1, 0, 2:], k[1, 0])
    assert torch.equal(k_all[0, 0, 2:], torch.zeros(2, 2))
    assert torch.equal(v_all, -k_all)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.zeros(2, 1, dtype=torch.long)), "input_pos .* is required when KV"),
        (
            lambda m: m(torch.zeros(2, 1, dtype=torch.long), input_pos=torch.full((2, 1), 8)),
            r"input_pos spans \[8, 8\] but the KV-cache holds positions 0..7",
        ),
        (
            lambda m: m(torch.zeros(3, 1, dtype=torch.long), input_pos=torch.zeros(3, 1).long()),
            "batch size 3 does not match the KV-cache batch size 2",
        ),
        (
            lambda m: m(
                torch.zeros(2, 1, dtype=torch.long),
                input_pos=torch.zeros(2, 1).long(),
                mask=torch.ones(2, 1, 1, dtype=torch.bool),
            ),
            r"mask must be a bool tensor of shape \(2, 1, 8\) \(\[batch, seq_len, cache_len\]\)",
        ),
    ],
)
def test_cached_forward_errors(call, message):
    model = tiny_tt_model()
    model.setup_caches(2, 8)
    with pytest.raises(ValueError, match=message):
        call(model)
