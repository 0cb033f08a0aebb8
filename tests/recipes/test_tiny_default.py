"""The README's main job, exactly as a newcomer runs it: the bundled tiny configs through the
real `tt` command, unmodified, one after the other. The model must actually learn to add.

Every bound below rests on the spread measured by bench/tiny_chain_spread.py (results in
bench/results/tiny_chain_spread.jsonl): the links up to tiny/qat with 5 seeds on each of two
kernel paths (this CPU's own, and the AVX2 kernels of MKL, ATen and oneDNN, which round as
another CPU would); tiny/grpo, tiny/reward_model and tiny/ppo, added later, from 2 runs each
(see each comment). Each bound leaves room below the worst run; "measured" gives the range.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_testing import losses, records
from tiny_chain import QAT_COMPARISON, exact_match, validation_loss


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


def val(run_dir: Path, key: str = "val_loss") -> dict[int, float]:
    return {step: record[key] for step, record in records(run_dir / "logs", key).items()}


@pytest.mark.timeout(2400)
def test_the_tiny_default_and_every_recipe_after_it(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"

    tt("run", "full_finetune", "--config", "tiny/full", cwd=tmp_path)
    full = losses(outputs / "tiny_full" / "logs")
    # measured: 6.12-6.29 -> 0.0014-0.0078, validation 0.0012-0.0072
    assert full[1] > 5.0 and full[1000] < 0.05, f"tiny/full: {full[1]} -> {full[1000]}"
    assert val(outputs / "tiny_full")[1000] < 0.05

    tt("run", "evaluate", "--config", "tiny/eval", cwd=tmp_path)
    results = json.loads((outputs / "tiny_eval" / "results.json").read_text())["results"]
    # measured: exact match 1.00 and multiple choice 1.00 in 10 of 10 runs
    assert results["tiny_arithmetic"]["exact_match,none"] >= 0.95, results
    assert results["tiny_arithmetic_mc"]["acc,none"] >= 0.95, results

    # int8 weights (torchao): a third of the size, the same answers (measured 1.00, 10 of 10)
    tt("run", "quantize", "--config", "tiny/quantize", cwd=tmp_path)
    out = outputs / "tiny_int8_eval.json"
    tt("run", "evaluate", "--config", "tiny/eval", "checkpoint_dir=./outputs/tiny_int8",
       f"output_path={out}", cwd=tmp_path)  # fmt: skip
    quantized = json.loads(out.read_text())["results"]
    assert quantized["tiny_arithmetic"]["exact_match,none"] >= 0.95, quantized

    # LoRA teaches sums with an operand above 20; greedy exact match over all 520 of them
    tt("run", "lora_finetune", "--config", "tiny/lora", cwd=tmp_path)
    lora = losses(outputs / "tiny_lora" / "logs")
    assert lora[max(lora)] < 0.1 * lora[1], f"tiny/lora: {lora[1]} -> {lora[max(lora)]}"
    new_sums = exact_match(outputs / "tiny_lora", 21, 30)
    assert new_sums >= 0.8, new_sums  # measured 0.90-1.00 (rank 16: see tiny/lora.yaml)

    # the README's example answer
    answer = tt("run", "generate", "--config", "tiny/generate", cwd=tmp_path)
    assert "39" in answer.splitlines(), answer

    # DPO from tiny/full: the correct sum over a near miss, on numbers up to 30
    tt("run", "dpo", "--config", "tiny/dpo", cwd=tmp_path)
    assert losses(outputs / "tiny_dpo" / "logs")[1] == pytest.approx(math.log(2), abs=1e-6)
    dpo, accuracy = val(outputs / "tiny_dpo"), val(outputs / "tiny_dpo", "val_rewards/accuracy")
    # measured: validation loss 0.53-0.68 at step 50 -> 0.48-0.62 at 100, accuracy 0.71-0.81
    assert dpo[100] < dpo[50] and dpo[100] < math.log(2) - 0.05, dpo
    assert accuracy[100] > 0.65, accuracy

    # tiny/kd: a quarter-size student from random init learns the sums from tiny/full's
    # distributions and the labels, and from the distributions alone (kd_ratio=1, no label)
    tt("run", "knowledge_distillation", "--config", "tiny/kd", cwd=tmp_path)
    tt("run", "knowledge_distillation", "--config", "tiny/kd", "loss.kd_ratio=1",
       "output_dir=./outputs/tiny_teacher_only", cwd=tmp_path)  # fmt: skip
    kd, alone = val(outputs / "tiny_kd"), val(outputs / "tiny_teacher_only")
    # measured: validation cross-entropy 0.76-0.88 at step 100 -> 0.39-0.54 at 300; from the
    # teacher alone 0.45-0.50 (the labels alone: 0.41-0.55; see the README)
    assert kd[300] < 0.7 * kd[100] and alone[300] < 0.6, (kd, alone)
    assert val(outputs / "tiny_kd", "val_kl")[300] < val(outputs / "tiny_kd", "val_kl")[100]

    # tiny/qat: fine-tuned for 2-bit weights, the quantized model keeps what it learned much
    # better than the same fine-tuning without fake quantization, quantized afterwards
    tt("run", "qat_finetune", "--config", "tiny/qat", cwd=tmp_path)
    tt("run", "full_finetune", "--config", "tiny/full", *QAT_COMPARISON["plain"], cwd=tmp_path)
    tt("run", "quantize", "--config", "tiny/quantize", *QAT_COMPARISON["ptq"], cwd=tmp_path)
    qat = validation_loss(outputs / "tiny_qat" / "step_150" / "quantized")
    plain = validation_loss(outputs / "tiny_plain_int2")
    assert qat < 0.5 * plain, (qat, plain)  # measured 0.003-0.019 against 0.02-0.81

    # tiny/grpo: RL on sums above 20 rewarded when right; held-out sums answered greedily
    tt("run", "grpo", "--config", "tiny/grpo", cwd=tmp_path)
    reward = val(outputs / "tiny_grpo", "val_reward")
    start, end = reward[0], reward[max(reward)]
    assert end > start + 0.25, reward  # measured +0.52, +0.63 (2 seeds)

    # tiny/reward_model: a score head on tiny/full ranks right answers above near misses, on
    # sums it never trained on
    tt("run", "reward_model", "--config", "tiny/reward_model", cwd=tmp_path)
    ranked = val(outputs / "tiny_reward_model", "val_accuracy")
    assert ranked[max(ranked)] >= 0.9, ranked  # measured 0.98-1.00 (2 seeds, 2 kernel paths)

    # tiny/ppo: verifiable rewards on sums above 20; held-out sums answered greedily
    tt("run", "ppo", "--config", "tiny/ppo", cwd=tmp_path)
    reward = val(outputs / "tiny_ppo", "val_score")
    # measured +0.21 to +0.40 (an AMD EPYC: 2 kernel paths, 2 seeds, 2 tiny/full runs)
    assert reward[max(reward)] > reward[0] + 0.12, reward

    # classic RLHF (tiny/ppo's comments): tiny/reward_model's score is the reward; the score of
    # greedy answers rises, and exact match does not fall (it rose in every run measured)
    rlhf = ["reward_model.checkpoint_dir=./outputs/tiny_reward_model", "output_dir=./outputs/rlhf"]
    tt("run", "ppo", "--config", "tiny/ppo", *rlhf, cwd=tmp_path)
    score = val(outputs / "rlhf", "val_score")
    exact = val(outputs / "rlhf", "val_rewards/arithmetic_answer")
    end = max(score)
    # measured (2 seeds, 2 kernel paths, 2 tiny/full runs): score +5.6 to +9.6, exact match
    # +0.07 to +0.30
    assert score[end] > score[0] + 3.0, score
    assert exact[end] >= exact[0], exact
