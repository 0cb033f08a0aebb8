"""Shared fixtures: a random-init tiny Llama saved with save_pretrained, and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ALL_LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def load_llama(tiny_llama_dir: Path):
    """A function giving a fresh copy of the tiny Llama in eval mode."""

    def load() -> LlamaForCausalLM:
        return LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()

    return load


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def _train_steps(model: torch.nn.Module, tokens: torch.Tensor, steps: int = 3) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture
def train_steps():
    """A function running a few AdamW steps of next-token loss on the trainable parameters."""
    return _train_steps
