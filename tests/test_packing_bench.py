"""bench/packing_bench.py: both layouts train on exactly the same tokens, and a tiny run of each
measures something."""

from __future__ import annotations

import math

import pytest
import torch

TINY = {"vocab_size": 96, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48}


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("packing_bench")


def test_lengths_are_mixed_and_bounded(bench) -> None:
    lengths = bench.sample_lengths(400, seed=0, longest=512)
    assert min(lengths) >= 24 and max(lengths) == 512  # the tail reaches the cap
    assert 130 <= sorted(lengths)[200] <= 190  # median ~160


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_packed_and_padded_train_the_same_tokens(bench, mode: str) -> None:
    lengths = bench.sample_lengths(20, seed=1, longest=64)
    samples = bench.make_samples(lengths, TINY["vocab_size"], seed=1)
    padded = bench.padded_batches(samples, batch_size=4)
    packed = bench.packed_batches(samples, max_seq_len=256, rows=2)
    results = {}
    for layout, batches in (("padded", padded), ("packed", packed)):
        model = bench.build(mode, torch.float32, TINY, max_seq_len=256)
        results[layout] = bench.train(model, batches)
    # each sample's first token is never a target, in either layout
    expected = sum(lengths) - len(lengths)
    assert results["padded"]["trained_tokens"] == results["packed"]["trained_tokens"] == expected
    assert results["packed"]["steps"] < results["padded"]["steps"]
    for result in results.values():
        assert result["trained_tokens_per_s"] > 0 and math.isfinite(result["seconds"])
        assert 0 <= result["waste"] < 1
