"""Benchmark: one mixture-of-experts feed-forward, forward + backward, grouped vs loop.

8 experts, top-2 (Mixtral's routing) at a width of 1024 with 2816-wide experts, on
``--tokens`` tokens; median of ``--repeats`` timed runs after a warm-up. "loop" runs each
expert once on its contiguous slice of the sorted tokens; "grouped" runs all experts in one
``torch._grouped_mm`` per projection on stacked weights. Both give the same outputs
(packages/tt-models/tests/test_moe.py).

    uv run python bench/moe_bench.py --out bench/results/moe_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tt_models.moe import MoEFeedForward


def time_block(compute: str, tokens: int, dtype: torch.dtype, repeats: int) -> float:
    torch.manual_seed(0)
    block = MoEFeedForward(1024, 2816, n_experts=8, top_k=2, norm_topk_prob=True, compute=compute)
    block = block.to(dtype)
    x = torch.randn(tokens, 1024, dtype=dtype, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        block(x).float().square().mean().backward()
        if i:  # the first run warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for compute in ("loop", "grouped"):
            seconds = time_block(compute, args.tokens, dtype, args.repeats)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "compute": compute,
                         "fwd_bwd_ms": round(seconds * 1000, 1),
                         "tokens_per_s": round(args.tokens / seconds)})  # fmt: skip
            print(rows[-1])
    result = {"machine": f"{_cpu_name()}, "
                         f"{torch.get_num_threads()} threads, torch {torch.__version__}",
              "tokens": args.tokens, "experts": 8, "top_k": 2, "dim": 1024, "expert_dim": 2816,
              "rows": rows}  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
