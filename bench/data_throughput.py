"""Benchmark: tokenization + packing throughput (tokens/s) and peak RSS while streaming.

Generates a JSONL of instruction rows (default 50 MB), trains a small byte-level BPE
(``tokenizers``) with a ChatML template, then streams the file through
``instruct_dataset(..., streaming=True, packed=True)``. Peak RSS should stay near the
baseline whatever the file size, since nothing holds more than one packed row.

    uv run python bench/data_throughput.py --mb 50
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

WORDS = (
    "the quick brown fox jumps over lazy dog model data token train answer question what "
    "is how many when where why because result value number sum total time place"
).split()
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_jsonl(path: Path, megabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    rows, size, target = 0, 0, int(megabytes * 1e6)
    with open(path, "w") as f:
        while size < target:
            row = {
                "input": " ".join(rng.choices(WORDS, k=rng.randint(10, 60))),
                "output": " ".join(rng.choices(WORDS, k=rng.randint(20, 200))),
            }
            line = json.dumps(row) + "\n"
            f.write(line)
            size += len(line)
            rows += 1
    return rows


def make_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=50.0, help="size of the generated JSONL")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    args = parser.parse_args()

    import tt_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data.jsonl"
        n_rows = write_jsonl(data, args.mb)
        tok = tt_data.from_pretrained(make_tokenizer(tmp), max_seq_len=args.max_seq_len)
        baseline = peak_rss_mb()
        ds = tt_data.instruct_dataset(
            tok, source="json", data_files=str(data), streaming=True, packed=True
        )
        start = time.perf_counter()
        n_packs = n_tokens = 0
        for row in ds:
            n_packs += 1
            n_tokens += sum(d >= 0 for d in row["document_ids"])
        elapsed = time.perf_counter() - start
        print(f"file: {args.mb:.0f} MB, {n_rows} rows -> {n_packs} packs of {args.max_seq_len}")
        print(f"tokenize+pack (streaming): {n_tokens} tokens in {elapsed:.1f} s "
              f"= {n_tokens / elapsed:,.0f} tokens/s ({n_rows / elapsed:,.0f} rows/s)")  # fmt: skip
        print(f"peak RSS: {baseline:.0f} MB before streaming, {peak_rss_mb():.0f} MB after")


if __name__ == "__main__":
    main()
