"""tt_models: decoder-only transformer definitions, KV-cache and generation.

Depends on torch only. One decoder serves every family: Llama 2/3/3.1/3.2/3.3 and SmolLM2,
Qwen2.5, Qwen3, Mistral, Gemma, Gemma 2, Phi-3/Phi-4 differ only by ``DecoderConfig`` switches
that pick small modules in ``build_model``. ``transformer_decoder`` is the Llama component
builder; the model builders (``llama3_2_1b``, ``qwen2_5_0_5b``, ``gemma2_9b`` ...) only fix the
published numbers. ``from_hf_config`` / ``to_hf_config`` convert to and from a transformers
``config.json`` dict of any supported ``model_type``.
State-dict keys follow docs/CONTRACTS.md (HF layout, short names: ``layers.0.attn.q_proj``).

Example::

    model = build_model(from_hf_config(json.load(open("config.json"))), dtype=torch.bfloat16)
    logits = model(tokens)  # [b, s, vocab], causal
    tokens, logprobs = generate(model, [[1, 2, 3], [4, 5]], 32, temperature=0)
"""

from tt_models import sizes
from tt_models.attention import MultiHeadAttention
from tt_models.builders import BLOCK_CLASSES, build_model, llama3_2_vision, transformer_decoder
from tt_models.config import DecoderConfig
from tt_models.cross_attention import CrossAttention, TransformerCrossAttentionLayer
from tt_models.decoder import TransformerDecoder, TransformerSelfAttentionLayer
from tt_models.families import FAMILIES, Family
from tt_models.feed_forward import FeedForward
from tt_models.fusion import FusionModel
from tt_models.generation import generate, generate_stream
from tt_models.hf_config import SUPPORTED_MODEL_TYPES, from_hf_config, to_hf_config
from tt_models.kv_cache import KVCache
from tt_models.masks import block_causal_mask, padded_mask_and_positions
from tt_models.moe import (
    MoEFeedForward,
    RouterLosses,
    active_parameters,
    moe_blocks,
    take_balance,
)
from tt_models.norm import RMSNorm
from tt_models.rope import RotaryEmbedding, apply_rope, rope_inv_freq
from tt_models.scorer import TransformerScorer, at_last_token, last_token_index
from tt_models.sizes import *  # noqa: F403  (llama3_2_1b, qwen2_5_0_5b, ...: the SIZES table)
from tt_models.vision import (
    VisionConfig,
    VisionEncoder,
    VisionEncoderLayer,
    supported_aspect_ratios,
)

__all__ = [
    "BLOCK_CLASSES",
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "CrossAttention",
    "DecoderConfig",
    "FusionModel",
    "TransformerCrossAttentionLayer",
    "VisionConfig",
    "VisionEncoder",
    "VisionEncoderLayer",
    "supported_aspect_ratios",
    "Family",
    "FeedForward",
    "KVCache",
    "MoEFeedForward",
    "RouterLosses",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "TransformerDecoder",
    "TransformerScorer",
    "TransformerSelfAttentionLayer",
    "active_parameters",
    "moe_blocks",
    "take_balance",
    "at_last_token",
    "last_token_index",
    "apply_rope",
    "block_causal_mask",
    "build_model",
    "from_hf_config",
    "generate",
    "generate_stream",
    "padded_mask_and_positions",
    "rope_inv_freq",
    "to_hf_config",
    "transformer_decoder",
    "llama3_2_vision",
    *sizes.__all__,
]
