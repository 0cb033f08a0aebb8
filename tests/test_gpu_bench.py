"""bench/gpu_bench.py: its CPU dry run exercises every path the GPU run takes (tt full, LoRA
and QLoRA with compile off and on, and batch-64 rollout decoding against transformers)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "gpu_bench.py"


def test_dry_run_measures_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["mode"], r["compile"]): r["tt"] for r in report["training"]}
    assert set(rows) == {(m, c) for m in ("full", "lora", "qlora") for c in (False, True)}
    for (mode, _), tt in rows.items():
        assert tt["tokens_per_s"] > 0 and 0 < tt["mfu"] < 1
        assert all(math.isfinite(x) for x in tt["losses"])
        # random tokens under the N(0, 0.02) init start near the uniform loss ln(vocab)
        assert abs(tt["losses"][0] - math.log(report["model"]["vocab_size"])) < 0.5
        if mode != "full":
            assert tt["params_trainable"] < tt["params_total"] / 5
    # compiled blocks compute the same step (up to bf16 rounding)
    for mode in ("full", "lora", "qlora"):
        eager, compiled = rows[(mode, False)]["losses"][0], rows[(mode, True)]["losses"][0]
        assert abs(eager - compiled) < 0.05, mode
    decode = report["rollout"]
    assert {(r["mode"], r["batch"]) for r in decode} == {("greedy", 64), ("sampled", 64)}
    assert all(r["tt_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0 for r in decode)
    assert [r["greedy_ids_equal"] for r in decode if r["mode"] == "greedy"] == [True]
