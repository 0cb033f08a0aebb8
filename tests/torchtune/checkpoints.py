"""Model directories laid out as torchtune's configs expect them, with tiny random weights.

A torchtune config names its files: ``<dir>/original/tokenizer.model`` (Meta's tiktoken ranks)
and ``checkpoint_files`` (``model.safetensors``, or ``model-0000K-of-0000N.safetensors``
shards). These are written here at those names for a Llama of a few hundred thousand
parameters, so the configs run on CPU with only their paths and lengths overridden.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file

# Text for the tokenizer's merges and the datasets' rows.
WORDS = (
    "the a model learns to answer questions about numbers colours animals and cities while "
    "it reads instructions responses and inputs given by users who ask for help with code "
    "lists sums stories and short explanations"
).split()


def write_llama3_ranks(path: Path, num_merges: int = 120) -> int:
    """Meta's Llama 3 ``tokenizer.model`` format (base64 token, rank) for a byte-level BPE
    learned on WORDS; returns the number of ranks (the special tokens follow them)."""
    ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
    words = [[bytes([b]) for b in (" " + w).encode()] for w in WORDS]
    for _ in range(num_merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        words = [_merge(w, a, b) for w in words]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return len(ranks)


# Qwen2's pre-tokenizer split, as its tokenizer.json (and torchtune's Qwen2Tokenizer) has it.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def write_qwen2_tokenizer(root: Path, special_tokens: list[str], eos_token: str) -> Path:
    """A Qwen2-style byte-level BPE learned on WORDS in ``root``: vocab.json and merges.txt
    (torchtune's files), tokenizer.json with ``special_tokens`` after the vocabulary and
    tokenizer_config.json (tt's). Returns tokenizer.json (torchtune's special_tokens_path)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4 + ["role user assistant system"], trainer)
    tokenizer.add_special_tokens(special_tokens)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.model.save(str(root))
    tokenizer.save(str(root / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": eos_token, "pad_token": "<|endoftext|>"}
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root / "tokenizer.json"


def _merge(word: list[bytes], a: bytes, b: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def write_llama_checkpoint(
    directory: Path, files: list[str], *, tie_embeddings: bool, seed: int = 0, dim: int = 128
) -> Path:
    """A random-init Llama 3 (transformers' layout and config.json) split into ``files``,
    with Meta's tokenizer file under ``original/``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    num_ranks = write_llama3_ranks(directory / "original" / "tokenizer.model")
    config = LlamaConfig(
        vocab_size=num_ranks + 256,  # Llama 3's 256 special tokens follow the ranks
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=500_000.0,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=num_ranks,
        eos_token_id=num_ranks + 1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tie_embeddings:
        state.pop("lm_head.weight", None)
    config.save_pretrained(directory)
    names = sorted(state)
    shards = [names[i :: len(files)] for i in range(len(files))]
    weight_map = {}
    for file, keys in zip(files, shards):
        save_file({k: state[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    if len(files) > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def write_rows(path: Path, kind: str, n: int = 64, seed: int = 0) -> Path:
    """``n`` JSONL rows in a dataset's schema: ``alpaca`` or ``stack_exchange`` (pairs)."""
    rng = random.Random(seed)

    def text(k: int, words: list[str] = WORDS) -> str:
        return " ".join(rng.choices(words, k=k))

    rows = {
        "alpaca": lambda i: {"instruction": text(6), "input": text(3) if i % 2 else "",
                             "output": text(8)},
        "stack_exchange": lambda i: {"question": text(6), "response_j": text(6, WORDS[:12]),
                                     "response_k": text(6, WORDS[12:])},
    }[kind]  # fmt: skip
    path.write_text("".join(json.dumps(rows(i)) + "\n" for i in range(n)))
    return path
