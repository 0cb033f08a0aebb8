"""GPU benchmark in one command: tt against torchtune 0.6.1 on the same GPU, bf16.

What it measures (each configuration in its own process, so peak memory is its own):

- training, a random-init Llama-3.2-1B-shaped model (vocab 128256, dim 2048, 16 layers,
  32 heads / 8 kv heads, MLP 8192, tied embeddings), bf16, batch 4 x 2048 tokens of full
  rows (what packing produces: no padding; attention causal over the row), AdamW (fused),
  chunked cross-entropy: full fine-tuning, LoRA (rank 8, alpha 16, on q, k, v, o, gate, up,
  down) and QLoRA (the same on an NF4 base), each with compile off and on
  (``torch.compile`` per block, as ``compile: true`` in a recipe; torchtune's own
  ``compile_model`` + ``compile_loss``). Reported: tokens/s (median step), MFU against the
  measured bf16 matmul peak and against the datasheet peak given by ``--peak-tflops``
  (H200: 989 dense bf16), peak memory (``torch.cuda.max_memory_allocated``), and the ratio
  tt / torchtune of each row;
- rollout decoding: ``bench/rollout_bench.py`` on the same 1B shape, batch 64, greedy and
  sampled, eager and compiled, tt's generator against transformers ``generate``.

    python bench/gpu_bench.py                        # CUDA, ~6-9 min on one H200
    python bench/gpu_bench.py --dry-run              # CPU, tiny sizes, every path once
    python bench/gpu_bench.py --wheels /path/wheels  # offline: pip-installs what is missing

Needs only torch (+ transformers for the rollout rows): tt is imported from this checkout's
``packages/*/src``; torchao (QLoRA, tt-recipes), omegaconf, safetensors and torchtune come
from ``--wheels`` when they are missing (``pip install --no-index --find-links``). torchtune
0.6.1 wants an older torchao than tt; ``--torchtune-python`` names another interpreter for its
rows (a venv with torch, torchtune 0.6.1 and torchao 0.10). Results: a table on stdout and
``bench/results/gpu_bench_<device>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SOURCES = [str(p) for p in sorted((ROOT / "packages").glob("*/src"))]
LLAMA_1B = {"vocab_size": 128_256, "dim": 2048, "n_layers": 16, "n_heads": 32,
            "n_kv_heads": 8, "hidden_dim": 8192}  # fmt: skip
# Every projection a multiple of 16384 elements: torchao's NF4 (torchtune's QLoRA) needs it.
TINY = {"vocab_size": 512, "dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
        "hidden_dim": 256}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("full", "lora", "qlora")
NEEDED = {"torchao": "torchao", "omegaconf": "omegaconf", "safetensors": "safetensors",
          "tqdm": "tqdm", "transformers": "transformers"}  # fmt: skip


def finetune_bench():
    """bench/finetune_bench.py as a module (its Settings and training step)."""
    spec = importlib.util.spec_from_file_location(
        "finetune_bench", ROOT / "bench" / "finetune_bench.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def settings(args: argparse.Namespace, mode: str, compiled: bool):
    bench = finetune_bench()
    return bench.Settings(
        mode=mode, dtype="bf16", device=args.device,
        model=TINY if args.dry_run else LLAMA_1B,
        batch_size=2 if args.dry_run else args.batch_size,
        seq_len=32 if args.dry_run else args.seq_len,
        steps=2 if args.dry_run else args.steps, warmup=1 if args.dry_run else args.warmup,
        lora_targets=TARGETS, lora_rank=8, lora_alpha=16.0, lr=1e-5, compile=compiled,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Workers (one per process)


def tt_worker(config: dict) -> dict:
    bench = finetune_bench()
    return bench.run_one(bench.Settings(**config))


def torchtune_worker(config: dict) -> dict:
    """The same step with torchtune's own model builders, LoRA, loss and compile helpers."""
    import torch
    from torchtune import training
    from torchtune.models.llama3_2 import llama3_2, lora_llama3_2
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    torch.manual_seed(0)
    device = torch.device(config["device"])
    m, mode = config["model"], config["mode"]
    shape = dict(vocab_size=m["vocab_size"], num_layers=m["n_layers"], num_heads=m["n_heads"],
                 num_kv_heads=m["n_kv_heads"], embed_dim=m["dim"], intermediate_dim=m["hidden_dim"],
                 max_seq_len=config["seq_len"])  # fmt: skip
    # as torchtune's recipes build: under the training dtype (an NF4 base quantizes from it)
    with training.set_default_dtype(torch.bfloat16), torch.device(device):
        if mode == "full":
            model = llama3_2(**shape)
        else:
            model = lora_llama3_2(
                ["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
                lora_rank=config["lora_rank"], lora_alpha=config["lora_alpha"],
                quantize_base=mode == "qlora", **shape,
            )  # fmt: skip
    if mode != "full":
        set_trainable_params(model, get_adapter_params(model))
    loss_fn = CEWithChunkedOutputLoss()
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    if config["compile"]:
        training.compile_model(model, verbose=False)
        loss_fn = training.compile_loss(loss_fn, verbose=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config["lr"], fused=True)
    tokens = torch.randint(
        0, m["vocab_size"], (config["batch_size"], config["seq_len"]), device=device
    )
    labels = torch.roll(tokens, -1, dims=1)

    def step() -> float:
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return time_steps(step, config, device, sum(p.numel() for p in trainable))


def time_steps(step, config: dict, device, trainable: int) -> dict:
    import torch

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for _ in range(config["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(config["steps"]):
        start = now()
        losses.append(step())
        times.append(now() - start)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"step_s": step_s, "tokens_per_s": config["batch_size"] * config["seq_len"] / step_s,
            "peak_memory_gib": peak / 2**30, "losses": losses, "params_trainable": trainable}  # fmt: skip


def worker_main(kind: str, config_json: str) -> None:
    config = json.loads(config_json)
    result = tt_worker(config) if kind == "tt" else torchtune_worker(config)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(SOURCES + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_worker(python: str, kind: str, config: dict, timeout: float) -> dict:
    command = [python, __file__, "--worker", kind, json.dumps(config)]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, env=environment(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1][7:])


def install_missing(wheels: Path) -> None:
    missing = [pkg for module, pkg in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing from {wheels}: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                        str(wheels), *missing], check=True)  # fmt: skip


def has_torchtune(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import torchtune"], capture_output=True)
    return probe.returncode == 0


def training_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    tune_python = args.torchtune_python or sys.executable
    with_torchtune = has_torchtune(tune_python)
    if not with_torchtune:
        print(f"torchtune is not importable by {tune_python}: its rows are left out", flush=True)
    for mode in MODES:
        for compiled in (False, True):
            config = asdict(settings(args, mode, compiled))
            print(f"training {mode:5} compile={'on' if compiled else 'off'} ...", flush=True)
            row = {
                "mode": mode,
                "compile": compiled,
                "tt": run_worker(sys.executable, "tt", config, args.timeout),
            }
            if with_torchtune:
                row["torchtune"] = run_worker(tune_python, "torchtune", config, args.timeout)
            rows.append(row)
            print("  " + summary_line(row, args), flush=True)
    return rows


def summary_line(row: dict, args: argparse.Namespace) -> str:
    tt, tune = row["tt"], row.get("torchtune")
    if "error" in tt:
        return f"tt failed: {tt['error']}"
    text = (f"tt {tt['tokens_per_s']:,.0f} tok/s, MFU {tt['mfu']:.1%} of measured "
            f"({tt['model_tflops_per_s'] / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s), "
            f"peak {tt['peak_memory_gib']:.1f} GiB")  # fmt: skip
    if tune is not None:
        if "error" in tune:
            text += f"; torchtune failed: {tune['error']}"
        else:
            text += (f"; torchtune {tune['tokens_per_s']:,.0f} tok/s, peak {tune['peak_memory_gib']:.1f}"
                     f" GiB; tt/torchtune {tt['tokens_per_s'] / tune['tokens_per_s']:.2f}x")  # fmt: skip
    return text


def rollout_rows(args: argparse.Namespace, out: Path) -> list[dict]:
    command = [sys.executable, str(ROOT / "bench" / "rollout_bench.py"), "--device", args.device,
               "--dtype", "bf16", "--batches", "64", "--results", str(out)]  # fmt: skip
    command += (
        ["--quick", "--repeats", "1", "--new-tokens", "8"]
        if args.dry_run
        else ["--model", "1b", "--compile"]
    )
    print("rollout decoding, batch 64 ...", flush=True)
    proc = subprocess.run(
        command, capture_output=True, text=True, env=environment(), timeout=args.timeout * 4
    )
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0:
        rows.append({"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]})
    for row in rows:
        print("  " + json.dumps(row), flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: every path once")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps (compilation)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet bf16 peak")
    parser.add_argument("--torchtune-python", default=None, help="interpreter with torchtune")
    parser.add_argument("--wheels", type=Path, default=None, help="offline wheels to install from")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.dry_run else "cuda"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return
    if args.wheels is not None:
        install_missing(args.wheels)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device here; use --dry-run for the CPU check")
    started = time.perf_counter()
    tag = "dry_run" if args.dry_run else args.device.split(":")[0]
    out = args.out or RESULTS / f"gpu_bench_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "model": TINY if args.dry_run else LLAMA_1B,
        "batch_size": settings(args, "full", False).batch_size,
        "seq_len": settings(args, "full", False).seq_len,
        "peak_tflops_datasheet": args.peak_tflops,
        "training": training_rows(args),
        "rollout": rollout_rows(args, out.with_name(out.stem + "_rollout.json")),
    }  # fmt: skip
    report["wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_bench: {report['wall_s']:.0f} s; wrote {out}")
    failed = [r for r in report["training"] if "error" in r["tt"]] + [
        r for r in report["rollout"] if "error" in r
    ]
    if failed:
        sys.exit(f"gpu_bench: {len(failed)} configuration(s) failed (see above)")


if __name__ == "__main__":
    main()
