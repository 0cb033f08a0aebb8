"""Benchmark: packed vs padded batches on samples of mixed lengths, in trained tokens per second.

The same samples are trained on both ways with the recipes' own step
(``tt_recipes.trainer.hidden_states`` -> ``ChunkedCrossEntropy`` -> backward -> fused AdamW):

- padded: ``batch_size`` samples per step in shuffled order, right-padded to the longest of the
  step (``tt_data.padded_collate_sft``, what ``packed: false`` does);
- packed: the same shuffled samples greedily packed into rows of ``max_seq_len``
  (``tt_data.PackedDataset``), ``rows`` rows per step, attending within their documents (a
  block-causal mask from ``document_ids``, what ``packed: true`` does).

Throughput counts trained tokens only (labels that are not ignored), so padding and the tail of
a packed row are the waste each way pays. Sample lengths are drawn from a log-normal that looks
like instruction data such as Alpaca under a chat template (median 160 tokens, a tail to 1024):
the token values do not change the speed. Both runs see every sample once, after one untimed
warm-up step each.

    uv run python bench/packing_bench.py                       # 88M Llama, bf16, full and LoRA
    uv run python bench/packing_bench.py --quick               # small model, smoke run, no JSON
    uv run python bench/packing_bench.py --modes lora --dtype fp32
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from finetune_bench import machine  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"
# The peer harness's Llama shape (87.8M parameters, untied, GQA 12/4).
MODEL = {"vocab_size": 8_000, "dim": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 4,
         "hidden_dim": 2048}  # fmt: skip
QUICK_MODEL = {"vocab_size": 1_000, "dim": 128, "n_layers": 2, "n_heads": 4, "hidden_dim": 256}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sample_lengths(n: int, seed: int, longest: int) -> list[int]:
    """``n`` lengths from a log-normal with median 160 tokens, clipped to [24, ``longest``]."""
    rng = random.Random(seed)
    return [min(longest, max(24, round(rng.lognormvariate(5.075, 0.7)))) for _ in range(n)]


def make_samples(lengths: list[int], vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """Samples whose every token is trained (labels == tokens; the loss shifts them)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        tokens = torch.randint(1, vocab, (n,), generator=g).tolist()
        samples.append({"tokens": tokens, "labels": list(tokens)})
    return samples


def padded_batches(samples: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
    from tt_data import padded_collate_sft

    return [
        padded_collate_sft(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)
    ]


def packed_batches(samples: list[dict], max_seq_len: int, rows: int) -> list[dict]:
    from tt_data import PackedDataset, padded_collate_packed

    packed = PackedDataset(samples, max_seq_len)
    return [
        padded_collate_packed([packed[j] for j in range(i, min(i + rows, len(packed)))])
        for i in range(0, len(packed), rows)
    ]


def build(mode: str, dtype: torch.dtype, model_args: dict, max_seq_len: int) -> torch.nn.Module:
    from tt_models import transformer_decoder
    from tt_peft import apply_lora, mark_only_adapters_trainable

    torch.manual_seed(0)
    model = transformer_decoder(**model_args, max_seq_len=max_seq_len, dtype=dtype)
    if mode == "lora":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        apply_lora(model, targets, rank=8, alpha=16)
        mark_only_adapters_trainable(model)
    return model.train()


def train(model: torch.nn.Module, batches: list[dict]) -> dict:
    """One untimed warm-up step, then every batch once; trained tokens per second."""
    from tt_recipes.losses import IGNORE_INDEX, ChunkedCrossEntropy, shift_labels
    from tt_recipes.trainer import hidden_states

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # the recipes' default
    loss_fn = ChunkedCrossEntropy()

    def step(batch: dict) -> int:
        targets = shift_labels(batch["labels"])
        trained = int((targets != IGNORE_INDEX).sum())
        loss = loss_fn(hidden_states(model, batch), model.logits_from_hidden, targets)
        (loss / trained).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return trained

    step(batches[0])
    start = time.perf_counter()
    trained = sum(step(batch) for batch in batches)
    seconds = time.perf_counter() - start
    positions = sum(batch["tokens"].numel() for batch in batches)
    return {
        "steps": len(batches),
        "trained_tokens": trained,
        "positions": positions,
        "waste": 1 - trained / positions,
        "seconds": seconds,
        "trained_tokens_per_s": trained / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8, help="padded: samples per step")
    parser.add_argument("--max-seq-len", type=int, default=2048, help="packed: row length")
    parser.add_argument("--rows", type=int, default=2, help="packed: rows per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small model and data, no JSON")
    args = parser.parse_args()
    model_args = QUICK_MODEL if args.quick else MODEL
    n = 24 if args.quick else args.samples
    longest = min(1024, args.max_seq_len)
    lengths = sample_lengths(n, args.seed, longest)
    samples = make_samples(lengths, model_args["vocab_size"], args.seed)
    layouts = {
        "padded": padded_batches(samples, args.batch_size),
        "packed": packed_batches(samples, args.max_seq_len, args.rows),
    }
    sorted_lengths = sorted(lengths)
    record = {
        "benchmark": "packing_bench",
        "machine": machine("cpu"),
        "model": model_args,
        "dtype": args.dtype,
        "samples": n,
        "length_median": sorted_lengths[n // 2],
        "length_mean": sum(lengths) / n,
        "length_max": sorted_lengths[-1],
        "padded_batch_size": args.batch_size,
        "packed_rows_per_step": args.rows,
        "packed_max_seq_len": args.max_seq_len,
        "runs": [],
    }
    for mode in args.modes.split(","):
        results = {}
        for layout, batches in layouts.items():
            model = build(mode, DTYPES[args.dtype], model_args, args.max_seq_len)
            results[layout] = train(model, batches)
            print(
                f"{mode} {args.dtype} {layout}: {results[layout]['trained_tokens_per_s']:.0f} "
                f"trained tokens/s, {results[layout]['steps']} steps, "
                f"{100 * results[layout]['waste']:.0f}% of positions not trained",
                flush=True,
            )
        speedup = (
            results["packed"]["trained_tokens_per_s"] / results["padded"]["trained_tokens_per_s"]
        )
        print(f"{mode} {args.dtype}: packed / padded = {speedup:.2f}x", flush=True)
        record["runs"].append({"mode": mode, **results, "packed_over_padded": speedup})
    if not args.quick:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / "packing_cpu.jsonl"
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {out}")


if __name__ == "__main__":
    main()
