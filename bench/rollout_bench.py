"""Benchmark: rollout decoding, tt's KV-cache generator against transformers ``generate`` on
the same weights (the generator GRPO/PPO use for rollouts).

A random-init Llama-shaped model is written once with ``tt_recipes.save_pretrained`` and
loaded by both libraries. Prompts are random token ids of one length; every row generates
exactly ``--new-tokens`` tokens (no stop token), so both do the same work. Each setting runs
in its own process, warm-up call first, then the median of ``--repeats`` timed calls.
tokens/s = batch x new tokens / seconds. Greedy ids of tt and transformers are compared.

    uv run python bench/rollout_bench.py                       # batch 16 and 64, CPU
    uv run python bench/rollout_bench.py --quick               # tiny model, smoke run
    uv run python bench/rollout_bench.py --device cuda --dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "rollout_cpu.json"
MODEL = {"vocab_size": 32_000, "dim": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 4,
         "hidden_dim": 1408, "max_seq_len": 1024, "tie_embeddings": True}  # fmt: skip
QUICK_MODEL = {"vocab_size": 512, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
               "hidden_dim": 128, "max_seq_len": 256, "tie_embeddings": True}  # fmt: skip
# Llama-3.2-1B's shape (random weights), for GPU runs (bench/gpu_bench.py).
LLAMA_1B = {"vocab_size": 128_256, "dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8,
            "hidden_dim": 8192, "max_seq_len": 1024, "tie_embeddings": True}  # fmt: skip
MODELS = {"small": MODEL, "1b": LLAMA_1B}


def write_model(directory: Path, model_args: dict) -> None:
    import torch
    import tt_models
    from tt_recipes import save_pretrained

    torch.manual_seed(0)
    save_pretrained(tt_models.transformer_decoder(**model_args), directory)


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (batch, length), generator=g).tolist()


def time_calls(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_tt(args: argparse.Namespace) -> dict:
    import torch
    from tt_models import generate
    from tt_recipes import from_pretrained

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = from_pretrained(args.model_dir, dtype=dtype, device=args.device)
    rows = prompts(args.batch, args.prompt_len, model.config.vocab_size)
    sampled = args.mode == "sampled"
    out = {}

    def call():
        with torch.no_grad():
            out["tokens"], _ = generate(
                model, rows, args.new_tokens, temperature=1.0 if sampled else 0.0,
                seeds=list(range(len(rows))) if sampled else None, compile=args.compile,
            )  # fmt: skip
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

    seconds = time_calls(call, args.repeats)
    return {"seconds": seconds, "tokens": out["tokens"].tolist()}


def run_hf(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype)
    model = model.to(args.device).eval()
    rows = prompts(args.batch, args.prompt_len, model.config.vocab_size)
    input_ids = torch.tensor(rows, device=args.device)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                  do_sample=args.mode == "sampled", pad_token_id=0, eos_token_id=None)  # fmt: skip
    if args.compile:  # transformers' own recipe: a static cache and a compiled forward
        kwargs["cache_implementation"] = "static"
        model.forward = torch.compile(model.forward)
    out = {}

    def call():
        with torch.no_grad():
            out["tokens"] = model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

    seconds = time_calls(call, args.repeats)
    return {"seconds": seconds, "tokens": out["tokens"][:, args.prompt_len :].tolist()}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    result = run_tt(args) if args.library == "tt" else run_hf(args)
    print("RESULT " + json.dumps(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--modes", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"]
    )
    parser.add_argument("--compile", action="store_true", help="also time compiled decoding")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="small", choices=list(MODELS), help="model shape")
    parser.add_argument("--quick", action="store_true", help="tiny model, no results file")
    parser.add_argument("--results", type=Path, default=RESULTS)
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--batches, --new-tokens and --repeats must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        write_model(model_dir, QUICK_MODEL if args.quick else MODELS[args.model])
        compiled = [False, True] if args.compile else [False]
        for batch in args.batches:
            for mode in args.modes:
                for compile_ in compiled:
                    row = {"batch": batch, "mode": mode, "compiled": compile_}
                    for library in ("tt", "hf"):
                        command = [sys.executable, __file__, "--worker", "--library", library,
                                   "--model-dir", str(model_dir), "--batch", str(batch),
                                   "--mode", mode, "--device", args.device, "--dtype", args.dtype,
                                   "--prompt-len", str(args.prompt_len),
                                   "--new-tokens", str(args.new_tokens),
                                   "--repeats", str(args.repeats),
                                   *(["--compile"] if compile_ else [])]  # fmt: skip
                        proc = subprocess.run(command, capture_output=True, text=True)
                        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                        if proc.returncode != 0 or not lines:
                            sys.exit(f"{library} {row} failed:\n{proc.stderr[-3000:]}")
                        result = json.loads(lines[-1][7:])
                        row[f"{library}_tokens_per_s"] = batch * args.new_tokens / result["seconds"]
                        row[f"{library}_ids"] = result["tokens"]
                    row["speedup"] = row["tt_tokens_per_s"] / row["hf_tokens_per_s"]
                    if mode == "greedy":
                        row["greedy_ids_equal"] = row["tt_ids"] == row["hf_ids"]
                    del row["tt_ids"], row["hf_ids"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if not args.quick:
        import torch

        report = {
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "torch": torch.__version__, "device": args.device},
            "model": MODELS[args.model], "dtype": args.dtype, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "rows": rows,
        }  # fmt: skip
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
