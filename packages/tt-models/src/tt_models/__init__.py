"""tt_models: decoder-only transformer definitions, KV-cache and generation.

Depends on torch only. The Llama family (Llama 2, 3, 3.1, 3.2, 3.3) is built by one component
builder, ``transformer_decoder``, from plain arguments (or ``build_model`` from a
``DecoderConfig``); the model builders (``llama3_2_1b`` ...) only fix the published numbers.
``from_hf_config`` / ``to_hf_config`` convert to and from a transformers ``config.json`` dict.
State-dict keys follow docs/CONTRACTS.md (HF layout, short names: ``layers.0.attn.q_proj``).

Example::

    model = build_model(from_hf_config(json.load(open("config.json"))), dtype=torch.bfloat16)
    logits = model(tokens)  # [b, s, vocab], causal
    tokens, logprobs = generate(model, [[1, 2, 3], [4, 5]], 32, temperature=0)
"""

from tt_models.attention import MultiHeadAttention
from tt_models.builders import (
    build_model,
    llama2_7b,
    llama2_13b,
    llama2_70b,
    llama3_1_8b,
    llama3_1_70b,
    llama3_1_405b,
    llama3_2_1b,
    llama3_2_3b,
    llama3_3_70b,
    llama3_8b,
    llama3_70b,
    transformer_decoder,
)
from tt_models.config import DecoderConfig
from tt_models.decoder import TransformerDecoder, TransformerSelfAttentionLayer
from tt_models.feed_forward import FeedForward
from tt_models.generation import generate, generate_stream
from tt_models.hf_config import SUPPORTED_MODEL_TYPES, from_hf_config, to_hf_config
from tt_models.kv_cache import KVCache
from tt_models.masks import block_causal_mask, padded_mask_and_positions
from tt_models.norm import RMSNorm
from tt_models.rope import RotaryEmbedding, apply_rope, rope_inv_freq

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "DecoderConfig",
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "TransformerDecoder",
    "TransformerSelfAttentionLayer",
    "apply_rope",
    "block_causal_mask",
    "build_model",
    "from_hf_config",
    "generate",
    "generate_stream",
    "llama2_13b",
    "llama2_70b",
    "llama2_7b",
    "llama3_1_405b",
    "llama3_1_70b",
    "llama3_1_8b",
    "llama3_2_1b",
    "llama3_2_3b",
    "llama3_3_70b",
    "llama3_70b",
    "llama3_8b",
    "padded_mask_and_positions",
    "rope_inv_freq",
    "to_hf_config",
    "transformer_decoder",
]
