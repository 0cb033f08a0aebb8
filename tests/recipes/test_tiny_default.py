"""The README's main job, exactly as a newcomer runs it: the bundled tiny configs through the
real `tt` command, unmodified. The model must actually learn to add."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_testing import losses
from tiny_chain import QAT_COMPARISON, validation_loss


def tt(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tt_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "TT_DEBUG": "1"},
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.timeout(1200)
def test_the_tiny_default_and_every_recipe_after_it(tmp_path: Path) -> None:
    tt("run", "full_finetune", "--config", "tiny/full", cwd=tmp_path)
    full = losses(tmp_path / "outputs" / "tiny_full" / "logs")
    assert full[1] > 5.0 and full[1000] < 0.1, f"tiny/full: {full[1]} -> {full[1000]}"

    tt("run", "evaluate", "--config", "tiny/eval", cwd=tmp_path)
    results = json.loads((tmp_path / "outputs" / "tiny_eval" / "results.json").read_text())
    # measured: 0.99 and 1.00 on 200 held-out sums
    assert results["results"]["tiny_arithmetic"]["exact_match,none"] >= 0.9, results
    assert results["results"]["tiny_arithmetic_mc"]["acc,none"] >= 0.95, results

    # int8 weights (torchao): a third of the size, the same answers (measured: 0.99 and 1.00)
    tt("run", "quantize", "--config", "tiny/quantize", cwd=tmp_path)
    out = tmp_path / "outputs" / "tiny_int8_eval.json"
    tt("run", "evaluate", "--config", "tiny/eval", "checkpoint_dir=./outputs/tiny_int8",
       f"output_path={out}", cwd=tmp_path)  # fmt: skip
    quantized = json.loads(out.read_text())["results"]
    assert quantized["tiny_arithmetic"]["exact_match,none"] >= 0.9, quantized

    tt("run", "lora_finetune", "--config", "tiny/lora", cwd=tmp_path)
    lora = losses(tmp_path / "outputs" / "tiny_lora" / "logs")
    last = max(lora)
    assert lora[last] < 0.5 * lora[1], f"tiny/lora: {lora[1]} -> {lora[last]}"

    answers = {}
    for a, b in [(25, 14), (12, 7), (22, 8)]:
        out = tt(
            "run",
            "generate",
            "--config",
            "tiny/generate",
            f"prompt='What is {a} + {b}?'",
            cwd=tmp_path,
        )
        answers[(a, b)] = out
    correct = [str(a + b) in out.splitlines() for (a, b), out in answers.items()]
    assert sum(correct) >= 2, answers

    # DPO from tiny/full: the correct sum over a near miss, on numbers up to 30
    tt("run", "dpo", "--config", "tiny/dpo", cwd=tmp_path)
    logs = tmp_path / "outputs" / "tiny_dpo" / "logs"
    assert losses(logs)[1] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    val = {
        r["step"]: r for r in map(json.loads, (logs / "metrics.jsonl").open()) if "val_loss" in r
    }
    # measured: val loss 0.623 -> 0.577, preference accuracy 0.66 -> 0.73
    assert val[100]["val_loss"] < val[50]["val_loss"] < math.log(2) - 0.03, val
    assert val[100]["val_rewards/accuracy"] > 0.65, val

    # tiny/kd: a quarter-size student learns more from tiny/full's distributions plus the
    # labels than from the labels alone (validation cross-entropy on the labels)
    tt("run", "knowledge_distillation", "--config", "tiny/kd", cwd=tmp_path)
    alone = "output_dir=./outputs/tiny_labels_only"
    tt(
        "run",
        "knowledge_distillation",
        "--config",
        "tiny/kd",
        "loss.kd_ratio=0",
        alone,
        cwd=tmp_path,
    )

    def last_val(run: str) -> float:
        log = tmp_path / "outputs" / run / "logs" / "metrics.jsonl"
        return [r for r in map(json.loads, log.open()) if "val_loss" in r][-1]["val_loss"]

    # measured: 0.538 with distillation, 0.580 without
    assert last_val("tiny_kd") < last_val("tiny_labels_only") - 0.02

    # tiny/qat: fine-tuned for 2-bit weights, the quantized model keeps what it learned much
    # better than the same fine-tuning without fake quantization, quantized afterwards
    tt("run", "qat_finetune", "--config", "tiny/qat", cwd=tmp_path)
    tt("run", "full_finetune", "--config", "tiny/full", *QAT_COMPARISON["plain"], cwd=tmp_path)
    tt("run", "quantize", "--config", "tiny/quantize", *QAT_COMPARISON["ptq"], cwd=tmp_path)
    qat = validation_loss(tmp_path / "outputs" / "tiny_qat" / "step_150" / "quantized")
    plain = validation_loss(tmp_path / "outputs" / "tiny_plain_int2")
    assert qat < 0.5 * plain, (qat, plain)  # measured: 0.019 and 0.059
