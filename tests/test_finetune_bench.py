"""bench/finetune_bench.py: the FLOP accounting against hand counts, and one tiny training run."""

from __future__ import annotations

import math

import pytest
import torch

TINY = {"vocab_size": 96, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48}


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("finetune_bench")


def tiny_settings(bench, mode: str, **overrides):
    fields = {
        "mode": mode,
        "dtype": "fp32",
        "device": "cpu",
        "model": TINY,
        "batch_size": 2,
        "seq_len": 16,
        "steps": 2,
        "warmup": 1,
        "lora_targets": ["q_proj", "v_proj"],
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "lr": 1e-3,
        **overrides,
    }
    return bench.Settings(**fields)


# Hand count for TINY: per layer q,k,v,o 4 * 32*32 + gate,up,down 3 * 32*48; tied output 96*32.
MATMUL_PARAMS = 2 * (4 * 32 * 32 + 3 * 32 * 48) + 96 * 32  # 20,480
# LoRA rank 4 on q_proj and v_proj: A [4, 32] + B [32, 4] each, in both layers.
LORA_PARAMS = 2 * 2 * (4 * 32 + 32 * 4)  # 1,024
ATTENTION = 12 * 2 * 32 * 16  # 12 * layers * d_attn * seq_len


def test_matmul_params_match_hand_count(bench):
    torch.manual_seed(0)
    model, n_matmul, n_lora = bench.build(tiny_settings(bench, "lora"), torch.device("cpu"))
    assert n_matmul == MATMUL_PARAMS
    assert n_lora == LORA_PARAMS
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LORA_PARAMS


def test_flops_per_token_formulas(bench):
    full = bench.flops_per_token(tiny_settings(bench, "full"), MATMUL_PARAMS, 0)
    lora = bench.flops_per_token(tiny_settings(bench, "lora"), MATMUL_PARAMS, LORA_PARAMS)
    assert full == 6 * 20_480 + 12_288
    assert lora == 4 * 20_480 + 6 * 1_024 + 12_288


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_tiny_run_trains_and_reports_consistent_numbers(bench, mode):
    result = bench.run_one(tiny_settings(bench, mode, lr=1e-2))
    assert len(result["losses"]) == 2 and all(math.isfinite(x) for x in result["losses"])
    # Random tokens under an N(0, 0.02) init start near the uniform loss ln(vocab).
    assert abs(result["losses"][0] - math.log(TINY["vocab_size"])) < 0.5
    assert result["tokens_per_s"] == pytest.approx(2 * 16 / result["step_s"])
    achieved = result["tokens_per_s"] * result["flops_per_token"]
    assert result["mfu"] == pytest.approx(achieved / (result["matmul_peak_tflops_per_s"] * 1e12))
    assert result["peak_memory_gib"] > 0 and result["matmul_peak_tflops_per_s"] > 0
    expected_trainable = LORA_PARAMS if mode == "lora" else result["params_total"]
    assert result["params_trainable"] == expected_trainable


def test_bad_arguments_are_named(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])
    assert "--steps 0 must be >= 1" in capsys.readouterr().err
