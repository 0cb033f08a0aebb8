"""Tokenizer backends behind one protocol, and ``from_pretrained`` to pick one from files."""

from __future__ import annotations

import os
from pathlib import Path

from tt_data.tokenizers.hf import HFTokenizer
from tt_data.tokenizers.protocol import ModelTokenizer, truncate
from tt_data.tokenizers.sentencepiece import SentencePieceTokenizer
from tt_data.tokenizers.tiktoken import Llama3Tokenizer

__all__ = [
    "HFTokenizer",
    "Llama3Tokenizer",
    "ModelTokenizer",
    "SentencePieceTokenizer",
    "from_pretrained",
    "truncate",
]


def from_pretrained(
    path: str | os.PathLike, max_seq_len: int | None = None, **kwargs
) -> ModelTokenizer:
    """Load the tokenizer in ``path``, choosing the backend from the files present.

    ``tokenizer.json`` -> HFTokenizer (the model's jinja chat template); ``*.tiktoken`` or
    Meta's ``tokenizer.model`` in BPE ranks form -> Llama3Tokenizer; a SentencePiece
    ``tokenizer.model`` -> SentencePieceTokenizer. ``path`` may also be one of those files.
    """
    path = Path(path)
    if path.is_file():
        return _from_file(path, max_seq_len, **kwargs)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
    if (path / "tokenizer.json").exists():
        return HFTokenizer.from_dir(path, max_seq_len=max_seq_len, **kwargs)
    candidates = sorted(path.glob("*.tiktoken")) + sorted(path.glob("*.model"))
    if not candidates:
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"no tokenizer in {str(path)!r}: expected tokenizer.json (Hugging Face), "
            f"*.tiktoken or tokenizer.model (SentencePiece / Llama 3); found {found}"
        )
    return _from_file(candidates[0], max_seq_len, **kwargs)


def _from_file(path: Path, max_seq_len: int | None, **kwargs) -> ModelTokenizer:
    if path.name.endswith(".json"):
        return HFTokenizer.from_dir(path.parent, max_seq_len=max_seq_len, **kwargs)
    if path.suffix == ".tiktoken" or _looks_like_tiktoken(path):
        return Llama3Tokenizer(path, max_seq_len=max_seq_len, **kwargs)
    return SentencePieceTokenizer(path, max_seq_len=max_seq_len, **kwargs)


def _looks_like_tiktoken(path: Path) -> bool:
    """Meta ships Llama 3's ranks as ``tokenizer.model``: text lines of 'base64 rank'."""
    with open(path, "rb") as f:
        first = f.readline(200).split()
    return len(first) == 2 and first[1].isdigit()
