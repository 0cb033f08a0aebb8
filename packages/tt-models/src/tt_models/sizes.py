"""Builders of the published model sizes, generated from one table.

Each entry is a family (``tt_models.families``), the numbers its release shares (vocabulary,
context, RoPE, norm epsilon) and the numbers of that size, from the models' own config.json
files; ``llama3_2_1b(device=None, dtype=None)`` and friends build it. The exact parameter
counts are tested against the published ones (tests/test_builders.py,
tests/test_family_builders.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tt_models.builders import Device, build_model
from tt_models.config import DecoderConfig
from tt_models.decoder import TransformerDecoder
from tt_models.families import FAMILIES
from tt_models.vision import VisionConfig


def _llama3_scaling(factor: float) -> dict[str, Any]:
    """Llama 3.1/3.2/3.3 RoPE scaling; only ``factor`` differs between releases."""
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


# What each release shares across its sizes.
_LLAMA2 = dict(model_type="llama", vocab_size=32_000, max_seq_len=4096)
_LLAMA3 = dict(model_type="llama", vocab_size=128_256, max_seq_len=8192, rope_base=500_000.0)
_LLAMA3_1 = {**_LLAMA3, "max_seq_len": 131_072, "rope_scaling": _llama3_scaling(8.0)}
_LLAMA3_2 = {**_LLAMA3_1, "rope_scaling": _llama3_scaling(32.0), "tie_embeddings": True}
_QWEN2_5 = dict(
    model_type="qwen2", vocab_size=151_936, max_seq_len=32_768, norm_eps=1e-6,
    rope_base=1_000_000.0, tie_embeddings=True,
)  # fmt: skip
# From 7B on: a larger (padded) vocabulary and separate output weights.
_QWEN2_5_LARGE = {
    **_QWEN2_5,
    "vocab_size": 152_064,
    "max_seq_len": 131_072,
    "tie_embeddings": False,
}
_QWEN3 = dict(
    model_type="qwen3", vocab_size=151_936, head_dim=128, max_seq_len=40_960, norm_eps=1e-6,
    rope_base=1_000_000.0,
)  # fmt: skip
_GEMMA = dict(
    model_type="gemma", activation="gelu_tanh", tie_embeddings=True, vocab_size=256_000,
    head_dim=256, max_seq_len=8192, norm_eps=1e-6,
)  # fmt: skip
_GEMMA2 = dict(
    _GEMMA, model_type="gemma2", attn_softcap=50.0, final_softcap=30.0, sliding_window=4096,
    query_pre_attn_scalar=256,
)  # fmt: skip
# Gemma 3 (config.json of google/gemma-3-1b-pt and the text_config of gemma-3-{4b,12b,27b}-pt):
# 5 local layers (RoPE theta 10K) to 1 global (theta 1M; linear scaling 8 from 4B on).
_GEMMA3 = dict(
    model_type="gemma3_text", activation="gelu_tanh", tie_embeddings=True, head_dim=256,
    norm_eps=1e-6, rope_base=1_000_000.0, local_rope_base=10_000.0, query_pre_attn_scalar=256,
    attn_softcap=None, final_softcap=None,
)  # fmt: skip
# The text towers of the multimodal 4B/12B/27B: the vocabulary holds the image tokens too.
_GEMMA3_TOWER = {
    **_GEMMA3,
    "vocab_size": 262_208,
    "max_seq_len": 131_072,
    "sliding_window": 1024,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
}
_QWEN3_MOE = {**_QWEN3, "model_type": "qwen3_moe", "n_experts": 128, "experts_per_token": 8,
              "norm_topk_prob": True}  # fmt: skip
# Llama 3.2 Vision (config.json of meta-llama/Llama-3.2-11B-Vision and -90B-Vision): a Llama
# 3.1 text decoder with a gated cross-attention layer every 5 layers from layer 3, and the
# same 560-pixel, 4-tile image encoder (VisionConfig's defaults) for both sizes.
_LLAMA3_2_VISION = {**_LLAMA3_1, "model_type": "mllama", "image_token_id": 128_256,
                    "extra_token_embeddings": 8, "vision": VisionConfig()}  # fmt: skip
_PHI3 = dict(model_type="phi3", norm_eps=1e-5)
_SMOLLM2 = dict(model_type="llama", vocab_size=49_152, max_seq_len=8192, tie_embeddings=True)
# Dimensions shared by the 8B and 70B models of every Llama generation (GQA, 8 kv heads).
_8B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14_336)
_70B = dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28_672)


def _dims(dim: int, n_layers: int, n_heads: int, n_kv_heads: int | None, hidden_dim: int, **more):
    return dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                hidden_dim=hidden_dim, **more)  # fmt: skip


@dataclass(frozen=True)
class Size:
    """One published model: its description and every DecoderConfig number of it."""

    doc: str
    numbers: dict[str, Any]

    def config(self) -> DecoderConfig:
        family = FAMILIES[self.numbers["model_type"]]
        numbers = dict(self.numbers)
        if family.sliding in ("alternate", "pattern"):
            numbers["layer_types"] = tuple(family.layer_types(numbers["n_layers"]))
        return DecoderConfig(**{**family.fixed, **numbers})


# fmt: off
SIZES: dict[str, Size] = {
    "llama2_7b": Size("Llama 2 7B (6.74B parameters).", {**_LLAMA2, **_dims(4096, 32, 32, None, 11_008)}),
    "llama2_13b": Size("Llama 2 13B (13.0B parameters).", {**_LLAMA2, **_dims(5120, 40, 40, None, 13_824)}),
    "llama2_70b": Size("Llama 2 70B (69.0B parameters).", {**_LLAMA2, **_70B}),
    "llama3_8b": Size("Llama 3 8B (8.03B parameters, 8K context).", {**_LLAMA3, **_8B}),
    "llama3_70b": Size("Llama 3 70B (70.6B parameters, 8K context).", {**_LLAMA3, **_70B}),
    "llama3_1_8b": Size("Llama 3.1 8B (8.03B parameters, 128K context via RoPE scaling factor 8).", {**_LLAMA3_1, **_8B}),
    "llama3_1_70b": Size("Llama 3.1 70B (70.6B parameters, 128K context).", {**_LLAMA3_1, **_70B}),
    "llama3_1_405b": Size("Llama 3.1 405B (405.9B parameters, 128K context).", {**_LLAMA3_1, **_dims(16_384, 126, 128, 8, 53_248)}),
    "llama3_2_1b": Size("Llama 3.2 1B (1.24B parameters, tied embeddings, RoPE scaling factor 32).", {**_LLAMA3_2, **_dims(2048, 16, 32, 8, 8192)}),
    "llama3_2_3b": Size("Llama 3.2 3B (3.21B parameters, tied embeddings, RoPE scaling factor 32).", {**_LLAMA3_2, **_dims(3072, 28, 24, 8, 8192)}),
    "llama3_3_70b": Size("Llama 3.3 70B (70.6B parameters; the Llama 3.1 70B architecture).", {**_LLAMA3_1, **_70B}),
    "llama3_2_vision_11b": Size("Llama 3.2 11B Vision (10.67B parameters: an 8B text decoder, 8 cross-attention layers and a 0.9B image encoder).", {**_LLAMA3_2_VISION, **_dims(4096, 40, 32, 8, 14_336), "cross_attention_layers": tuple(range(3, 40, 5))}),
    "llama3_2_vision_90b": Size("Llama 3.2 90B Vision (88.6B parameters: a 70B text decoder, 20 cross-attention layers and the 11B's image encoder).", {**_LLAMA3_2_VISION, **_dims(8192, 100, 64, 8, 28_672), "cross_attention_layers": tuple(range(3, 100, 5))}),
    "qwen2_5_0_5b": Size("Qwen2.5 0.5B (494M parameters, tied embeddings).", {**_QWEN2_5, **_dims(896, 24, 14, 2, 4864)}),
    "qwen2_5_1_5b": Size("Qwen2.5 1.5B (1.54B parameters, tied embeddings).", {**_QWEN2_5, **_dims(1536, 28, 12, 2, 8960)}),
    "qwen2_5_3b": Size("Qwen2.5 3B (3.09B parameters, tied embeddings).", {**_QWEN2_5, **_dims(2048, 36, 16, 2, 11_008)}),
    "qwen2_5_7b": Size("Qwen2.5 7B (7.62B parameters).", {**_QWEN2_5_LARGE, **_dims(3584, 28, 28, 4, 18_944)}),
    "qwen2_5_14b": Size("Qwen2.5 14B (14.8B parameters).", {**_QWEN2_5_LARGE, **_dims(5120, 48, 40, 8, 13_824)}),
    "qwen2_5_32b": Size("Qwen2.5 32B (32.8B parameters).", {**_QWEN2_5_LARGE, **_dims(5120, 64, 40, 8, 27_648)}),
    "qwen2_5_72b": Size("Qwen2.5 72B (72.7B parameters).", {**_QWEN2_5_LARGE, **_dims(8192, 80, 64, 8, 29_568)}),
    "qwen3_0_6b": Size("Qwen3 0.6B (596M parameters, tied embeddings, head_dim 128 > dim / n_heads).", {**_QWEN3, **_dims(1024, 28, 16, 8, 3072), "tie_embeddings": True}),
    "qwen3_1_7b": Size("Qwen3 1.7B (1.72B parameters, tied embeddings).", {**_QWEN3, **_dims(2048, 28, 16, 8, 6144), "tie_embeddings": True}),
    "qwen3_4b": Size("Qwen3 4B (4.02B parameters, tied embeddings).", {**_QWEN3, **_dims(2560, 36, 32, 8, 9728), "tie_embeddings": True}),
    "qwen3_8b": Size("Qwen3 8B (8.19B parameters).", {**_QWEN3, **_dims(4096, 36, 32, 8, 12_288)}),
    "qwen3_14b": Size("Qwen3 14B (14.8B parameters).", {**_QWEN3, **_dims(5120, 40, 40, 8, 17_408)}),
    "qwen3_32b": Size("Qwen3 32B (32.8B parameters).", {**_QWEN3, **_dims(5120, 64, 64, 8, 25_600)}),
    "qwen3_moe_30b_a3b": Size("Qwen3-30B-A3B (30.5B parameters, 3.35B active: 8 of 128 experts per token).", {**_QWEN3_MOE, **_dims(2048, 48, 32, 4, 6144), "moe_hidden_dim": 768}),
    "qwen3_moe_235b_a22b": Size("Qwen3-235B-A22B (235.1B parameters, 22.2B active: 8 of 128 experts per token).", {**_QWEN3_MOE, **_dims(4096, 94, 64, 4, 12_288), "moe_hidden_dim": 1536}),
    "mixtral_8x7b": Size("Mixtral 8x7B v0.1 (46.7B parameters, 12.9B active: 2 of 8 experts per token).", dict(model_type="mixtral", vocab_size=32_000, max_seq_len=32_768, norm_eps=1e-5, rope_base=1_000_000.0, n_experts=8, experts_per_token=2, norm_topk_prob=True, **_dims(4096, 32, 32, 8, 14_336))),
    "mistral_7b": Size("Mistral 7B v0.1 (7.24B parameters, 4096-token sliding window).", dict(model_type="mistral", vocab_size=32_000, max_seq_len=32_768, norm_eps=1e-5, sliding_window=4096, **_dims(4096, 32, 32, 8, 14_336))),
    "gemma_2b": Size("Gemma 2B (2.51B parameters, multi-query attention).", {**_GEMMA, **_dims(2048, 18, 8, 1, 16_384)}),
    "gemma_7b": Size("Gemma 7B (8.54B parameters).", {**_GEMMA, **_dims(3072, 28, 16, 16, 24_576)}),
    "gemma2_2b": Size("Gemma 2 2B (2.61B parameters).", {**_GEMMA2, **_dims(2304, 26, 8, 4, 9216)}),
    "gemma2_9b": Size("Gemma 2 9B (9.24B parameters).", {**_GEMMA2, **_dims(3584, 42, 16, 8, 14_336)}),
    "gemma2_27b": Size("Gemma 2 27B (27.2B parameters; queries scaled by (dim / n_heads) ** -0.5 = 144 ** -0.5, not head_dim 128).", {**_GEMMA2, **_dims(4608, 46, 32, 16, 36_864), "head_dim": 128, "query_pre_attn_scalar": 144}),
    "gemma3_1b": Size("Gemma 3 1B (1.00B parameters, 512-token sliding window, 32K context).", {**_GEMMA3, "vocab_size": 262_144, "max_seq_len": 32_768, "sliding_window": 512, **_dims(1152, 26, 4, 1, 6912)}),
    "gemma3_4b": Size("The text decoder of Gemma 3 4B (3.88B parameters; the model adds a 0.42B SigLIP image encoder).", {**_GEMMA3_TOWER, **_dims(2560, 34, 8, 4, 10_240)}),
    "gemma3_12b": Size("The text decoder of Gemma 3 12B (11.8B parameters; plus the image encoder).", {**_GEMMA3_TOWER, **_dims(3840, 48, 16, 8, 15_360)}),
    "gemma3_27b": Size("The text decoder of Gemma 3 27B (27.0B parameters; plus the image encoder; queries scaled by 168 ** -0.5).", {**_GEMMA3_TOWER, **_dims(5376, 62, 32, 16, 21_504), "head_dim": 128, "query_pre_attn_scalar": 168}),
    "phi3_mini": Size("Phi-3 mini 4K (3.82B parameters, 2047-token sliding window).", {**_PHI3, "vocab_size": 32_064, "max_seq_len": 4096, "sliding_window": 2047, **_dims(3072, 32, 32, None, 8192)}),
    "phi4_14b": Size("Phi-4 14B (14.7B parameters; the Phi-3 architecture with GQA).", {**_PHI3, "vocab_size": 100_352, "max_seq_len": 16_384, "rope_base": 250_000.0, **_dims(5120, 40, 40, 10, 17_920)}),
    "smollm2_135m": Size("SmolLM2 135M (134.5M parameters; Llama architecture, tied embeddings).", {**_SMOLLM2, "rope_base": 100_000.0, **_dims(576, 30, 9, 3, 1536)}),
    "smollm2_360m": Size("SmolLM2 360M (361.8M parameters).", {**_SMOLLM2, "rope_base": 100_000.0, **_dims(960, 32, 15, 5, 2560)}),
    "smollm2_1_7b": Size("SmolLM2 1.7B (1.71B parameters).", {**_SMOLLM2, "rope_base": 130_000.0, **_dims(2048, 24, 32, 32, 8192)}),
}
# fmt: on

Builder = Callable[..., TransformerDecoder]


def _builder(name: str, size: Size) -> Builder:
    def build(device: Device = None, dtype: torch.dtype | None = None) -> TransformerDecoder:
        return build_model(size.config(), device=device, dtype=dtype)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{size.doc}\n\nBuilds on ``device`` in ``dtype``; ``device='meta'`` allocates nothing."
    )
    build.__module__ = __name__
    return build


# The builders are module attributes: ``tt_models.llama3_2_1b`` is a `_component_` path.
globals().update({name: _builder(name, size) for name, size in SIZES.items()})
__all__ = list(SIZES)
