"""How tiny/vision's outcome moves with the seed and the CPU's kernels.

Runs the bundled tiny/vision config through `tt run` for each (seed, kernel path), one at a
time, then answers 128 held-out pictures greedily (``tt_recipes.vision.answer_accuracy``; the
integration test asserts a bound on the first 64 of them). Kernel paths as in
bench/tiny_chain_spread.py: ``default`` is this CPU's, ``avx2`` the AVX2 kernels of MKL, ATen
and oneDNN (what another CPU would round like).

    uv run python bench/tiny_vision_spread.py --seeds 0 1 --kernels default avx2

Results: one JSON line per run appended to bench/results/tiny_vision.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "tiny_vision.jsonl"
KERNELS = {
    "default": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
}  # fmt: skip
HELD_OUT = 128


def held_out_accuracy(step_dir: Path) -> float:
    from tt_data import synthetic_shapes
    from tt_data.tokenizers import from_pretrained as load_tokenizer
    from tt_recipes import from_pretrained
    from tt_recipes.assets import asset_path
    from tt_recipes.vision import answer_accuracy

    tokenizer = load_tokenizer(asset_path("tiny_vision_tokenizer"))
    pictures = synthetic_shapes(tokenizer, n=HELD_OUT, seed=0, split="validation")
    return answer_accuracy(from_pretrained(step_dir), tokenizer, pictures)


def run(seed: int, kernels: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="tiny_vision_"))
    env = {**os.environ, **KERNELS[kernels], "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tt_cli", "run", "full_finetune", "--config", "tiny/vision",
         f"output_dir={out}", f"seed={seed}"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    step_dir = sorted(out.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    # the accuracy under the same kernels as the training
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"from tiny_vision_spread import held_out_accuracy as f; print(f({str(step_dir)!r}))"  # fmt: skip
    accuracy = float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                    capture_output=True, text=True).stdout.split()[-1])  # fmt: skip
    return {
        "seed": seed, "kernels": kernels, "first_loss": losses[0], "last_loss": losses[-1],
        "held_out_accuracy": accuracy, "held_out": HELD_OUT, "seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    args = parser.parse_args()
    for kernels in args.kernels:
        for seed in args.seeds:
            record = run(seed, kernels)
            print(json.dumps(record))
            with RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
