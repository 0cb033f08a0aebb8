"""How much the tiny chain's outcomes move with the seed and with the CPU's kernels.

The bundled tiny configs are what a newcomer runs first and what CI's integration test chains
(full -> eval -> quantize -> LoRA -> generate -> DPO -> KD -> QAT -> GRPO). Their outcomes depend on
floating-point rounding, which differs between CPUs (AMD EPYC, Intel Xeon with AVX-512/AMX):
this benchmark runs the chain for several seeds under each kernel path, so the thresholds in
tests/recipes/test_tiny_default.py and the numbers in the README rest on a measured spread.

Kernel paths: ``default`` is whatever this CPU picks; ``avx2`` exports
``MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, which on an
AVX-512 machine changes fp32 matmul rounding (MKL), the vectorised elementwise kernels (ATen)
and the bf16 paths (oneDNN): the kernels another CPU would run. Each (kernel path, seed) runs
in its own process, one at a time (two torch processes on 2 cores slow each other badly).

    uv run python bench/tiny_chain_spread.py                       # 5 seeds x 2 kernel paths
    uv run python bench/tiny_chain_spread.py --seeds 0 --kernels default avx2 mkl aten onednn
    uv run python bench/tiny_chain_spread.py --only full lora      # the first links only

Results: one JSON line per chain in bench/results/tiny_chain_spread.jsonl (appended) and a
table of min / max per outcome on stdout.
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

RESULTS = Path(__file__).parent / "results" / "tiny_chain_spread.jsonl"
AVX2 = {
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
KERNELS = {
    "default": {},
    "avx2": AVX2,
    "mkl": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "aten": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}
LINKS = (
    "full",
    "eval",
    "quantize",
    "lora",
    "generate",
    "dpo",
    "kd",
    "qat",
    "grpo",
    "reward_model",
    "ppo",
)
# The prompts the integration test asks after tiny/lora (operands above 20 are LoRA's).
PROMPTS = [(25, 14), (12, 7), (22, 8), (27, 19), (30, 30), (4, 29)]


sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "recipes"))
from tiny_chain import QAT_COMPARISON, exact_match, greedy_answers, validation_loss  # noqa: E402


def run(recipe: str, config: str, overrides: list[str]) -> None:
    from tt_recipes.config import prepare_config
    from tt_recipes.registry import load_recipe, resolve_config

    path, _ = resolve_config(config)
    spec = load_recipe(recipe)
    spec.main(prepare_config(spec.spec, path, overrides, source=config))


def metrics(log_dir: Path, key: str) -> dict[int, float]:
    out = {}
    for line in (log_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            out[record["step"]] = record[key]
    return out


def eval_scores(out: Path, checkpoint: str) -> dict[str, float]:
    run("evaluate", "tiny/eval", [f"checkpoint_dir={checkpoint}", f"output_path={out}"])
    results = json.loads(out.read_text())["results"]
    return {
        "exact_match": results["tiny_arithmetic"]["exact_match,none"],
        "mc_acc": results["tiny_arithmetic_mc"]["acc,none"],
    }


def chain(root: Path, seed: int, links: tuple[str, ...], result: dict) -> None:
    """The integration test's chain with ``seed=S`` for every training run; outcomes go into
    ``result`` as they come (a failure keeps what was measured before it)."""
    os.chdir(root)
    s = f"seed={seed}"
    t = time.perf_counter()
    run("full_finetune", "tiny/full", [s])
    loss, val = (
        metrics(root / "outputs/tiny_full/logs", "loss"),
        metrics(root / "outputs/tiny_full/logs", "val_loss"),
    )
    result["full"] = {
        "first_loss": loss[min(loss)],
        "last_loss": loss[max(loss)],
        "val_loss": val[max(val)],
        "exact_match_all_441": exact_match(root / "outputs/tiny_full", 0, 20),
        "seconds": time.perf_counter() - t,
    }
    if "eval" in links:
        result["eval"] = eval_scores(root / "outputs/eval.json", "./outputs/tiny_full")
    if "quantize" in links:
        run("quantize", "tiny/quantize", [])
        result["quantize"] = eval_scores(root / "outputs/eval_int8.json", "./outputs/tiny_int8")
    if "lora" in links:
        t = time.perf_counter()
        run("lora_finetune", "tiny/lora", [s])
        loss = metrics(root / "outputs/tiny_lora/logs", "loss")
        val = metrics(root / "outputs/tiny_lora/logs", "val_loss")
        result["lora"] = {
            "first_loss": loss[min(loss)],
            "last_loss": loss[max(loss)],
            "val_loss": val[max(val)],
            "exact_match_new_sums": exact_match(root / "outputs/tiny_lora", 21, 30),
            "exact_match_old_sums": exact_match(root / "outputs/tiny_lora", 0, 20),
            "seconds": time.perf_counter() - t,
        }
    if "generate" in links:
        answers = greedy_answers(root / "outputs/tiny_lora", PROMPTS)
        result["generate"] = {f"{a}+{b}": ans for (a, b), ans in zip(PROMPTS, answers)}
    if "dpo" in links:
        t = time.perf_counter()
        run("dpo", "tiny/dpo", [s])
        val = {k: v for k, v in metrics(root / "outputs/tiny_dpo/logs", "val_loss").items()}
        acc = metrics(root / "outputs/tiny_dpo/logs", "val_rewards/accuracy")
        result["dpo"] = {
            "first_loss": metrics(root / "outputs/tiny_dpo/logs", "loss")[1],
            "val_loss": val,
            "val_accuracy": acc,
            "seconds": time.perf_counter() - t,
        }
    if "kd" in links:
        run("knowledge_distillation", "tiny/kd", [s])
        run("knowledge_distillation", "tiny/kd", [s, "loss.kd_ratio=0",
                                                  "output_dir=./outputs/tiny_labels_only"])  # fmt: skip
        run("knowledge_distillation", "tiny/kd", [s, "loss.kd_ratio=1",
                                                  "output_dir=./outputs/tiny_teacher_only"])  # fmt: skip
        result["kd"] = {}
        for name in ("tiny_kd", "tiny_labels_only", "tiny_teacher_only"):
            val = metrics(root / f"outputs/{name}/logs", "val_loss")
            result["kd"][f"{name}_first_val"] = val[min(val)]
            result["kd"][f"{name}_last_val"] = val[max(val)]
    if "qat" in links:
        result["qat"] = qat_versus_ptq(root, s)
    if "grpo" in links:
        t = time.perf_counter()
        run("grpo", "tiny/grpo", [s])
        val = metrics(root / "outputs/tiny_grpo/logs", "val_reward")
        result["grpo"] = {
            "val_reward_start": val[0],
            "val_reward": val,
            "val_reward_end": val[max(val)],
            "seconds": time.perf_counter() - t,
        }
    if "reward_model" in links or "ppo" in links:
        t = time.perf_counter()
        run("reward_model", "tiny/reward_model", [s])
        result["reward_model"] = {
            "val_accuracy": metrics(root / "outputs/tiny_reward_model/logs", "val_accuracy"),
            "seconds": time.perf_counter() - t,
        }
    if "ppo" in links:
        t = time.perf_counter()
        run("ppo", "tiny/ppo", [s])
        val = metrics(root / "outputs/tiny_ppo/logs", "val_score")
        result["ppo"] = {"val_reward": val, "seconds": time.perf_counter() - t}


def qat_versus_ptq(root: Path, seed_override: str) -> dict[str, float]:
    from tt_recipes.checkpointing import latest_step_dir

    run("qat_finetune", "tiny/qat", [seed_override])
    run("full_finetune", "tiny/full", [seed_override, *QAT_COMPARISON["plain"]])
    run("quantize", "tiny/quantize", QAT_COMPARISON["ptq"])
    qat_dir = latest_step_dir(root / "outputs/tiny_qat")
    return {
        "qat_int2_val_loss": validation_loss(qat_dir / "quantized"),
        "ptq_int2_val_loss": validation_loss(root / "outputs/tiny_plain_int2"),
        "plain_val_loss": validation_loss(latest_step_dir(root / "outputs/tiny_plain")),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    result: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="tt_spread_") as tmp:
            chain(Path(tmp), args.seed, tuple(args.only), result)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    record = {
        "kernels": args.kernel,
        "seed": args.seed,
        "env": KERNELS[args.kernel],
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        **result,
    }
    print("RESULT " + json.dumps(record), flush=True)


def cpu_name() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_bench import _cpu_model

    return _cpu_model()


def summarize(records: list[dict]) -> None:
    """min..max of every numeric outcome per kernel path, across seeds."""
    by_kernel: dict[str, dict[str, list[float]]] = {}
    for record in records:
        table = by_kernel.setdefault(record["kernels"], {})
        for link in LINKS:
            for name, value in record.get(link, {}).items():
                if isinstance(value, dict):  # step -> value: keep the last step
                    value = value[max(value, key=int)] if value else None
                if isinstance(value, (int, float)):
                    table.setdefault(f"{link}.{name}", []).append(value)
    for kernel, table in by_kernel.items():
        print(f"\n{kernel} ({len(records)} chains in all)")
        for name, values in table.items():
            print(f"  {name:34s} {min(values):9.4f} .. {max(values):9.4f}  (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--kernels", nargs="+", default=["default", "avx2"], choices=KERNELS)
    parser.add_argument("--only", nargs="+", default=list(LINKS), choices=LINKS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    records = []
    for kernel in args.kernels:
        for seed in args.seeds:
            env = {**os.environ, **KERNELS[kernel], "TQDM_DISABLE": "1"}
            command = [sys.executable, __file__, "--worker", "--seed", str(seed),
                       "--kernel", kernel, "--only", *args.only]  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines or '"error":' in lines[-1]:
                print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"chain failed: kernels={kernel} seed={seed}")
            record = json.loads(lines[-1].removeprefix("RESULT "))
            record["cpu"] = cpu_name()
            record["chain_seconds"] = time.perf_counter() - start
            records.append(record)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"kernels={kernel} seed={seed}: {json.dumps(record)[:300]}...", flush=True)
    summarize(records)


if __name__ == "__main__":
    main()
