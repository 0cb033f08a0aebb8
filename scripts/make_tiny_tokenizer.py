"""Builds the tokenizer bundled with the tiny default configs (tt_recipes/assets/tiny_tokenizer).

A byte-level BPE with 512 tokens, digits split one by one (so arithmetic is learnable by a
tiny model), ChatML special tokens and chat template, trained on a few KB of text written
here. Deterministic: running it again produces the same files.

    uv run python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = Path(__file__).parents[1] / "packages/tt-recipes/src/tt_recipes/assets/tiny_tokenizer"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ENGLISH = """
The quick brown fox jumps over the lazy dog. A tiny model learns to add and subtract numbers.
What is the answer? The answer is a number. Question: how much is twelve plus seven? Answer:
You are a helpful assistant that answers arithmetic questions with a single number.
Training a language model means predicting the next token from the tokens before it.
Fine-tuning adapts a pretrained model to a task with a small learning rate and few steps.
"""


def corpus() -> list[str]:
    rng = random.Random(0)
    lines = [line for line in ENGLISH.splitlines() if line]
    for _ in range(2000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-"])
        result = a + b if op == "+" else a - b
        lines.append(f"What is {a} {op} {b}? {result}")
    return lines * 3


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
