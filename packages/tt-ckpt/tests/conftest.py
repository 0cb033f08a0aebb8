"""Fixtures: tiny Llama checkpoints saved the ways real ones come."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

# --import-mode=importlib does not put the tests folder on sys.path; the helpers live there.
sys.path.insert(0, str(Path(__file__).parent))

from ckpt_testutils import tiny_llama, write_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def llama() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="session")
def llama_dir(llama, tmp_path_factory) -> Path:
    """A single-file safetensors checkpoint with tokenizer and generation files beside it."""
    path = tmp_path_factory.mktemp("llama")
    llama.save_pretrained(path)
    write_tokenizer(path)
    (path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    return path
