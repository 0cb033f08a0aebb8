"""Benchmark: fine-tuning throughput (tokens/s), peak memory and MFU, full and LoRA, fp32/bf16.

The step is the recipes' own: ``tt_models.transformer_decoder`` ->
``hidden = model(tokens, return_hidden=True)`` -> ``ChunkedCrossEntropy(hidden,
model.logits_from_hidden, targets)`` -> backward -> ``torch.optim.AdamW`` step; LoRA runs
``tt_peft.apply_lora`` + ``mark_only_adapters_trainable`` first. Tokens are random (throughput
does not depend on their values). Each (mode, dtype) runs in a fresh process so peak memory
(CUDA: max allocated; CPU: peak RSS) belongs to that configuration alone.

MFU = model FLOPs per second / the matmul peak measured at start-up in the same process and
dtype (a large square matmul, best of several), not the vendor's datasheet number.

Model FLOPs per trained token (N = parameters of the matmuls: every linear layer of the blocks
plus the output projection; the embedding lookup is not a matmul; L layers, d_attn =
n_heads * head_dim, T = sequence length; attention counted without the causal saving, as PaLM
does; recomputation by checkpointing is not model FLOPs and is not counted):

    full FT : 6 N + 12 L d_attn T          (forward 2N, backward 2N input- + 2N weight-grads)
    LoRA    : 4 N + 6 N_lora + 12 L d_attn T
              (frozen base: forward 2N + input-grads 2N, no weight-grads; the adapters train)

    uv run python bench/finetune_bench.py                 # fp32+bf16, full+LoRA, this device
    uv run python bench/finetune_bench.py --quick         # small model, smoke run, no JSON
    uv run python bench/finetune_bench.py --device cuda --batch-size 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"
# A ~110M-parameter Llama-shaped model (tied embeddings, like Llama 3.2 1B).
MODEL = {"vocab_size": 32_000, "dim": 768, "n_layers": 12, "n_heads": 12, "hidden_dim": 2048}
QUICK_MODEL = {"vocab_size": 4_000, "dim": 256, "n_layers": 4, "n_heads": 4, "hidden_dim": 704}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOAD_LIMIT = 1.5  # load average above which the numbers are marked as taken under load


@dataclass
class Settings:
    """One benchmark configuration (what a worker process runs)."""

    mode: str
    dtype: str
    device: str
    model: dict
    batch_size: int
    seq_len: int
    steps: int
    warmup: int
    lora_targets: list[str]
    lora_rank: int
    lora_alpha: float
    lr: float
    compile: bool = False  # torch.compile each block, as the recipes' ``compile: true``


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of a large square matmul in ``dtype`` on ``device`` (the MFU denominator)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for attempt in range(100):
        start = _now(device)
        a @ b
        elapsed = _now(device) - start
        if attempt > 0:  # the first call pays for kernel selection / page faults
            best = max(best, 2 * n**3 / elapsed)
        if time.perf_counter() > deadline and attempt >= 3:
            break
    return best


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def flops_per_token(settings: Settings, n_matmul: int, n_lora: int) -> float:
    """Model FLOPs per trained token; see the module docstring for the formula."""
    m = settings.model
    attention = 12 * m["n_layers"] * m["dim"] * settings.seq_len  # d_attn == dim here
    if settings.mode == "full":
        return 6 * n_matmul + attention  # qlora counts as lora: dequantizing is not model FLOPs
    return 4 * n_matmul + 6 * n_lora + attention


def matmul_params(model: torch.nn.Module) -> int:
    """Weights that take part in matmuls: block linears + the output projection."""
    blocks = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("layers.")
    )
    return blocks + model.output_weight().numel()


def build(settings: Settings, device: torch.device) -> tuple[torch.nn.Module, int, int]:
    """Model for ``settings``; returns ``(model, matmul params, LoRA params)``."""
    from tt_models import transformer_decoder
    from tt_peft import adapter_params, apply_lora, mark_only_adapters_trainable

    model = transformer_decoder(
        **settings.model,
        max_seq_len=settings.seq_len,
        tie_embeddings=True,
        device=device,
        dtype=DTYPES[settings.dtype],
    )
    n_matmul = matmul_params(model)  # counted before LoRA wraps the linears
    n_lora = 0
    if settings.mode in ("lora", "qlora"):  # qlora: the frozen base weights in NF4
        quantize = settings.mode == "qlora"
        apply_lora(
            model,
            settings.lora_targets,
            settings.lora_rank,
            settings.lora_alpha,
            quantize_base=quantize,
        )
        mark_only_adapters_trainable(model)
        n_lora = sum(p.numel() for p in adapter_params(model).values())
    if settings.compile:
        from tt_recipes.training import compile_blocks

        compile_blocks(model)
    return model.train(), n_matmul, n_lora


def run_one(settings: Settings) -> dict:
    """Train ``warmup + steps`` steps and measure; runs in its own process."""
    from tt_recipes.losses import ChunkedCrossEntropy

    torch.manual_seed(0)
    device = torch.device(settings.device)
    peak = matmul_peak_flops(device, DTYPES[settings.dtype])
    memory_before = current_memory_bytes(device)
    model, n_matmul, n_lora = build(settings, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, fused=True)  # the recipes' default
    loss_fn = ChunkedCrossEntropy()
    shape = (settings.batch_size, settings.seq_len)
    tokens = torch.randint(0, settings.model["vocab_size"], shape, device=device)
    targets = torch.roll(tokens, -1, dims=1)

    def step() -> float:
        hidden = model(tokens, return_hidden=True)
        loss = loss_fn(hidden, model.logits_from_hidden, targets) / targets.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(settings.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(settings.steps):
        start = _now(device)
        losses.append(step())
        times.append(_now(device) - start)
    # The median step: robust to a colleague's job stealing the cores for one step.
    step_s = statistics.median(times)
    tokens_per_s = targets.numel() / step_s
    per_token = flops_per_token(settings, n_matmul, n_lora)
    return {
        "mode": settings.mode,
        "dtype": settings.dtype,
        "compile": settings.compile,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        "params_matmul": n_matmul,
        "flops_per_token": per_token,
        "step_s": step_s,
        "step_times_s": times,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": tokens_per_s * per_token / 1e12,
        "matmul_peak_tflops_per_s": peak / 1e12,
        "mfu": tokens_per_s * per_token / peak,
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        "memory_before_model_gib": memory_before / 2**30,
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS",
        "losses": losses,
        "load_average_1min": os.getloadavg()[0],
    }


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_memory_bytes(device: torch.device) -> int:
    """Memory in use now (CPU: resident set, which includes the Python + torch baseline)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_isolated(settings: Settings) -> dict:
    """Run one configuration in a fresh process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(run_one, settings).result()


def machine(device: str) -> dict:
    """Describe where the numbers were taken."""
    info = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'mode':<5} {'dtype':<5} {'trainable':>11} {'step s':>7} {'tok/s':>8} "
        f"{'TFLOP/s':>8} {'peak':>8} {'MFU':>6} {'mem GiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:<5} {r['dtype']:<5} {r['params_trainable']:>11,} {r['step_s']:>7.2f} "
            f"{r['tokens_per_s']:>8.1f} {r['model_tflops_per_s']:>8.3f} "
            f"{r['matmul_peak_tflops_per_s']:>8.3f} {r['mfu']:>6.1%} {r['peak_memory_gib']:>8.2f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode", nargs="+", choices=["full", "lora", "qlora"], default=["full", "lora"]
    )
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: cuda 8, cpu 1")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--quick", action="store_true", help="small model, 2 steps, no JSON")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps {args.steps} must be >= 1 and --warmup {args.warmup} >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


def settings_for(args: argparse.Namespace, mode: str, dtype: str) -> Settings:
    quick = args.quick
    batch = args.batch_size or (8 if args.device.startswith("cuda") else 1)
    return Settings(
        mode=mode,
        dtype=dtype,
        device=args.device,
        model=QUICK_MODEL if quick else MODEL,
        batch_size=batch,
        seq_len=128 if quick else args.seq_len,
        steps=2 if quick else args.steps,
        warmup=1 if quick else args.warmup,
        lora_targets=args.lora_targets.split(","),
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lr=1e-5,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    rows, configs = [], []
    for dtype in args.dtype:
        for mode in args.mode:
            settings = settings_for(args, mode, dtype)
            print(f"running {mode} {dtype} ...", flush=True)
            rows.append(run_isolated(settings))
            configs.append(asdict(settings))
    load_after = os.getloadavg()
    print_table(rows)
    worst_load = max(load_before[0], load_after[0])
    report = {
        "machine": machine(args.device),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "under_load": worst_load > LOAD_LIMIT,
        "note": (
            f"machine shared with other jobs (1-min load average up to {worst_load:.1f} on "
            f"{os.cpu_count()} cores): numbers are lower bounds"
            if worst_load > LOAD_LIMIT
            else "machine otherwise idle"
        ),
        "flops_formula": __doc__.split("Model FLOPs per trained token")[1].split("uv run")[0],
        "settings": configs,
        "results": rows,
    }
    if args.quick and args.out is None:
        return
    out = args.out or RESULTS_DIR / f"finetune_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
