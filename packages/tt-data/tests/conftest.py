"""Fixtures: tiny tokenizers trained in the test session (no model hub)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

CORPUS = (
    "The quick brown fox jumps over the lazy dog. What is 17 + 25? The answer is 42.\n"
    "You are a helpful assistant. Hello, how are you today? I am fine, thank you!\n"
    "Summarize this dialogue: Alice met Bob at the station and they talked about trains.\n"
    "Correct this to standard English: she go to school yesterday. She went to school.\n"
    "Below is an instruction that describes a task. Write a response that completes it.\n"
    "### Instruction:\n### Input:\n### Response:\n 0 1 2 3 4 5 6 7 8 9 10 + - = ? !\n"
    "Über café naïve — unicode text survives round trips. Tabs\tand  double  spaces.\n"
) * 20

HF_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<bos>", "<eos>", "<pad>",
    "<start_of_turn>", "<end_of_turn>", "<s>", "</s>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|end|>",
]  # fmt: skip


@pytest.fixture(scope="session")
def hf_tokenizer_json(tmp_path_factory) -> Path:
    """A byte-level BPE with every chat template's special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=HF_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    path = tmp_path_factory.mktemp("hf_tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def write_hf_dir(directory: Path, tokenizer_json: Path, config: dict) -> Path:
    """A Hugging Face tokenizer directory: tokenizer.json + tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    full = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(full))
    return directory


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A tiny SentencePiece BPE model with Gemma's turn markers as user-defined pieces."""
    import sentencepiece as spm

    directory = tmp_path_factory.mktemp("sp")
    (directory / "corpus.txt").write_text(CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=500,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        model_type="bpe",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]"],
        byte_fallback=True,
        pad_id=3,
        minloglevel=2,
    )
    return directory / "tokenizer.model"


def make_tiktoken_ranks(path: Path, num_merges: int = 200) -> Path:
    """A tiny byte-level BPE ranks file: 256 bytes then greedy pair merges over CORPUS."""
    ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
    words = [[bytes([b]) for b in w.encode()] for w in CORPUS.split(" ")]
    for _ in range(num_merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        words = [_merge(w, a, b) for w in words]
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _merge(word: list[bytes], a: bytes, b: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


@pytest.fixture(scope="session")
def tiktoken_file(tmp_path_factory) -> Path:
    return make_tiktoken_ranks(tmp_path_factory.mktemp("tiktoken") / "tokenizer.tiktoken")


@pytest.fixture(scope="session")
def llama3_tokenizer(tiktoken_file):
    from tt_data.tokenizers import Llama3Tokenizer

    return Llama3Tokenizer(tiktoken_file)


LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
CHATML_QWEN = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# Mistral v0.3 style: the system prompt goes into the LAST user turn, so renderings of
# prefixes are not prefixes of the full rendering (exercises the mask fallback).
MISTRAL = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}"
    "{% endif %}{{ bos_token }}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if message['role'] == 'user' %}{% if loop.last and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
# Phi-3 style: eos only at the very end, so a prefix ending in an assistant turn renders
# text (eos) that the full conversation does not have at that point.
PHI3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

TEMPLATES = {
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "chatml": (CHATML_QWEN, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "gemma": (GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "mistral": (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}),
    "phi3": (PHI3, {"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
}


@pytest.fixture(scope="session")
def chat_templates() -> dict[str, tuple[str, dict]]:
    """name -> (chat template, special tokens of tokenizer_config.json)."""
    return TEMPLATES


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory, hf_tokenizer_json) -> dict[str, Path]:
    """One HF tokenizer directory per chat template family."""
    root = tmp_path_factory.mktemp("hf_dirs")
    return {
        name: write_hf_dir(root / name, hf_tokenizer_json, {"chat_template": tpl, **special})
        for name, (tpl, special) in TEMPLATES.items()
    }
