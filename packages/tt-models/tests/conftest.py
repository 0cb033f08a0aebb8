"""Fixtures: tiny random transformers Llama models and their tt_models twins."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from tt_models import TransformerDecoder, build_model, from_hf_config

sys.path.insert(0, str(Path(__file__).parent))
from tt_models_testing import (  # noqa: E402
    TINY,
    family_hf_model,
    hf_to_tt_state_dict,
    randomize_norms_and_biases,
)


@pytest.fixture
def llama_pair() -> Callable[..., tuple[LlamaForCausalLM, TransformerDecoder]]:
    """Factory: ``llama_pair(**LlamaConfig overrides) -> (hf_model, tt_model)`` in fp32 eval."""

    def make(**overrides) -> tuple[LlamaForCausalLM, TransformerDecoder]:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()
        randomize_norms_and_biases(hf)
        tt = build_model(from_hf_config(hf.config.to_dict())).eval()
        tt.load_state_dict(hf_to_tt_state_dict(hf.state_dict()), strict=True)
        return hf, tt

    return make


@pytest.fixture
def family_pair() -> Callable[..., tuple[torch.nn.Module, TransformerDecoder]]:
    """Factory: ``family_pair(name, **config overrides) -> (hf_model, tt_model)`` for a family of
    ``tt_models_testing.FAMILIES``, tt weights loaded from the transformers model."""

    def make(name: str, **overrides) -> tuple[torch.nn.Module, TransformerDecoder]:
        hf = family_hf_model(name, **overrides)
        config = hf.config.to_dict()
        tt = build_model(from_hf_config(config)).eval()
        tt.load_state_dict(hf_to_tt_state_dict(hf.state_dict(), hf.config.model_type, config))
        return hf, tt

    return make
