"""Model builders of the families beyond Llama: Qwen2.5, Qwen3, Mistral, Gemma, Gemma 2, Phi-3/4
and SmolLM2. Each family is ``DecoderConfig`` switches (``_QWEN2_5`` ...) and each builder only
fixes the published numbers (from the models' config.json files)."""

from __future__ import annotations

from typing import Any

import torch

from tt_models.builders import Device, build_model
from tt_models.config import DecoderConfig
from tt_models.decoder import TransformerDecoder

# Switches and numbers each family shares across sizes.
_QWEN2_5 = dict(
    model_type="qwen2",
    qkv_bias=True,
    vocab_size=151_936,
    max_seq_len=32_768,
    norm_eps=1e-6,
    rope_base=1_000_000.0,
)
# Qwen2.5 from 7B on has a larger (padded) vocabulary and separate output weights.
_QWEN2_5_LARGE = {**_QWEN2_5, "vocab_size": 152_064, "max_seq_len": 131_072}
_QWEN3 = dict(
    model_type="qwen3",
    qk_norm=True,
    vocab_size=151_936,
    head_dim=128,
    max_seq_len=40_960,
    norm_eps=1e-6,
    rope_base=1_000_000.0,
)
_GEMMA = dict(
    model_type="gemma",
    norm_offset=1.0,
    scale_embeddings=True,
    activation="gelu_tanh",
    tie_embeddings=True,
    vocab_size=256_000,
    head_dim=256,
    max_seq_len=8192,
    norm_eps=1e-6,
)
_GEMMA2 = dict(
    _GEMMA,
    model_type="gemma2",
    post_norms=True,
    attn_softcap=50.0,
    final_softcap=30.0,
    sliding_window=4096,
)
_PHI3 = dict(model_type="phi3", norm_eps=1e-5)
_SMOLLM2 = dict(model_type="llama", vocab_size=49_152, max_seq_len=8192, tie_embeddings=True)


def _build(
    family: dict[str, Any], device: Device, dtype: torch.dtype | None, **numbers: Any
) -> TransformerDecoder:
    if family["model_type"] == "gemma2":
        # Gemma 2 alternates sliding-window (even) and global (odd) layers.
        numbers["layer_types"] = _alternating_layer_types(numbers["n_layers"])
    return build_model(DecoderConfig(**{**family, **numbers}), device=device, dtype=dtype)


def _alternating_layer_types(n_layers: int) -> tuple[str, ...]:
    return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers))


def qwen2_5_0_5b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 0.5B (494M parameters, tied embeddings)."""
    return _build(
        _QWEN2_5, device, dtype, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
        hidden_dim=4864, tie_embeddings=True,
    )  # fmt: skip


def qwen2_5_1_5b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 1.5B (1.54B parameters, tied embeddings)."""
    return _build(
        _QWEN2_5, device, dtype, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2,
        hidden_dim=8960, tie_embeddings=True,
    )  # fmt: skip


def qwen2_5_3b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 3B (3.09B parameters, tied embeddings)."""
    return _build(
        _QWEN2_5, device, dtype, dim=2048, n_layers=36, n_heads=16, n_kv_heads=2,
        hidden_dim=11_008, tie_embeddings=True,
    )  # fmt: skip


def qwen2_5_7b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 7B (7.62B parameters)."""
    return _build(
        _QWEN2_5_LARGE, device, dtype, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4,
        hidden_dim=18_944,
    )  # fmt: skip


def qwen2_5_14b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 14B (14.8B parameters)."""
    return _build(
        _QWEN2_5_LARGE, device, dtype, dim=5120, n_layers=48, n_heads=40, n_kv_heads=8,
        hidden_dim=13_824,
    )  # fmt: skip


def qwen2_5_32b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 32B (32.8B parameters)."""
    return _build(
        _QWEN2_5_LARGE, device, dtype, dim=5120, n_layers=64, n_heads=40, n_kv_heads=8,
        hidden_dim=27_648,
    )  # fmt: skip


def qwen2_5_72b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen2.5 72B (72.7B parameters)."""
    return _build(
        _QWEN2_5_LARGE, device, dtype, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
        hidden_dim=29_568,
    )  # fmt: skip


def qwen3_0_6b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 0.6B (596M parameters, tied embeddings, head_dim 128 > dim / n_heads)."""
    return _build(
        _QWEN3, device, dtype, dim=1024, n_layers=28, n_heads=16, n_kv_heads=8,
        hidden_dim=3072, tie_embeddings=True,
    )  # fmt: skip


def qwen3_1_7b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 1.7B (1.72B parameters, tied embeddings)."""
    return _build(
        _QWEN3, device, dtype, dim=2048, n_layers=28, n_heads=16, n_kv_heads=8,
        hidden_dim=6144, tie_embeddings=True,
    )  # fmt: skip


def qwen3_4b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 4B (4.02B parameters, tied embeddings)."""
    return _build(
        _QWEN3, device, dtype, dim=2560, n_layers=36, n_heads=32, n_kv_heads=8,
        hidden_dim=9728, tie_embeddings=True,
    )  # fmt: skip


def qwen3_8b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 8B (8.19B parameters)."""
    return _build(
        _QWEN3, device, dtype, dim=4096, n_layers=36, n_heads=32, n_kv_heads=8,
        hidden_dim=12_288,
    )  # fmt: skip


def qwen3_14b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 14B (14.8B parameters)."""
    return _build(
        _QWEN3, device, dtype, dim=5120, n_layers=40, n_heads=40, n_kv_heads=8,
        hidden_dim=17_408,
    )  # fmt: skip


def qwen3_32b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Qwen3 32B (32.8B parameters)."""
    return _build(
        _QWEN3, device, dtype, dim=5120, n_layers=64, n_heads=64, n_kv_heads=8,
        hidden_dim=25_600,
    )  # fmt: skip


def mistral_7b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Mistral 7B v0.1 (7.24B parameters, 4096-token sliding window)."""
    return _build(
        dict(model_type="mistral"), device, dtype, vocab_size=32_000, dim=4096, n_layers=32,
        n_heads=32, n_kv_heads=8, hidden_dim=14_336, max_seq_len=32_768, norm_eps=1e-5,
        sliding_window=4096,
    )  # fmt: skip


def gemma_2b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Gemma 2B (2.51B parameters, multi-query attention)."""
    return _build(
        _GEMMA, device, dtype, dim=2048, n_layers=18, n_heads=8, n_kv_heads=1, hidden_dim=16_384
    )


def gemma_7b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Gemma 7B (8.54B parameters)."""
    return _build(
        _GEMMA, device, dtype, dim=3072, n_layers=28, n_heads=16, n_kv_heads=16, hidden_dim=24_576
    )


def gemma2_2b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Gemma 2 2B (2.61B parameters)."""
    return _build(
        _GEMMA2, device, dtype, dim=2304, n_layers=26, n_heads=8, n_kv_heads=4,
        hidden_dim=9216, query_pre_attn_scalar=256,
    )  # fmt: skip


def gemma2_9b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Gemma 2 9B (9.24B parameters)."""
    return _build(
        _GEMMA2, device, dtype, dim=3584, n_layers=42, n_heads=16, n_kv_heads=8,
        hidden_dim=14_336, query_pre_attn_scalar=256,
    )  # fmt: skip


def gemma2_27b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Gemma 2 27B (27.2B parameters; queries scaled by (dim / n_heads) ** -0.5 = 144 ** -0.5,
    not head_dim 128)."""
    return _build(
        _GEMMA2, device, dtype, dim=4608, n_layers=46, n_heads=32, n_kv_heads=16,
        hidden_dim=36_864, head_dim=128, query_pre_attn_scalar=144,
    )  # fmt: skip


def phi3_mini(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Phi-3 mini 4K (3.82B parameters, 2047-token sliding window)."""
    return _build(
        _PHI3, device, dtype, vocab_size=32_064, dim=3072, n_layers=32, n_heads=32,
        hidden_dim=8192, max_seq_len=4096, sliding_window=2047,
    )  # fmt: skip


def phi4_14b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """Phi-4 14B (14.7B parameters; the Phi-3 architecture with GQA)."""
    return _build(
        _PHI3, device, dtype, vocab_size=100_352, dim=5120, n_layers=40, n_heads=40,
        n_kv_heads=10, hidden_dim=17_920, max_seq_len=16_384, rope_base=250_000.0,
    )  # fmt: skip


def smollm2_135m(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """SmolLM2 135M (134.5M parameters; Llama architecture, tied embeddings)."""
    return _build(
        _SMOLLM2, device, dtype, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
        hidden_dim=1536, rope_base=100_000.0,
    )  # fmt: skip


def smollm2_360m(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """SmolLM2 360M (361.8M parameters)."""
    return _build(
        _SMOLLM2, device, dtype, dim=960, n_layers=32, n_heads=15, n_kv_heads=5,
        hidden_dim=2560, rope_base=100_000.0,
    )  # fmt: skip


def smollm2_1_7b(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
    """SmolLM2 1.7B (1.71B parameters)."""
    return _build(
        _SMOLLM2, device, dtype, dim=2048, n_layers=24, n_heads=32, n_kv_heads=32,
        hidden_dim=8192, rope_base=130_000.0,
    )  # fmt: skip
