"""Builders: ``build_model`` from a ``DecoderConfig`` and the ``transformer_decoder`` component
builder (every dimension an argument). The published sizes are in ``tt_models.sizes``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from tt_models.attention import MultiHeadAttention
from tt_models.config import DecoderConfig
from tt_models.cross_attention import CrossAttention, TransformerCrossAttentionLayer
from tt_models.decoder import TransformerDecoder, TransformerSelfAttentionLayer
from tt_models.feed_forward import FeedForward
from tt_models.fusion import FusionModel
from tt_models.moe import MoEFeedForward
from tt_models.norm import RMSNorm
from tt_models.rope import RotaryEmbedding
from tt_models.vision import VisionConfig, VisionEncoder, VisionEncoderLayer

Device = torch.device | str | None
# The repeated blocks of every model built here: the units that FSDP shards, activation
# checkpointing recomputes and torch.compile compiles one by one.
BLOCK_CLASSES = (TransformerSelfAttentionLayer, TransformerCrossAttentionLayer, VisionEncoderLayer)


def build_model(
    cfg: DecoderConfig, device: Device = None, dtype: torch.dtype | None = None
) -> TransformerDecoder | FusionModel:
    """Build the decoder ``cfg`` describes, allocating parameters on ``device`` in ``dtype``
    (with ``cfg.vision``: a ``FusionModel`` of the image encoder and the decoder).

    ``device="meta"`` allocates nothing (materialise later with ``model.to_empty(device=...)``
    and load weights). Otherwise weights are initialised for training from scratch
    (``TransformerDecoder.init_weights``).
    """
    # Without a device, keep whatever default device the caller has set.
    device_ctx = nullcontext() if device is None else torch.device(device)
    with _default_dtype(dtype), device_ctx:
        model = TransformerDecoder(
            tok_embeddings=nn.Embedding(cfg.embedding_rows, cfg.dim),
            layers=[
                _build_cross_layer(cfg) if cfg.is_cross_attention_layer(i) else _build_layer(cfg)
                for i in range(cfg.n_layers)
            ],
            rope=RotaryEmbedding(cfg.head_dim, cfg.rope_base, cfg.rope_scaling),
            norm=_norm(cfg, cfg.dim),
            output=None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False),
            config=cfg,
            local_rope=None
            if cfg.local_rope_base is None
            else RotaryEmbedding(cfg.head_dim, cfg.local_rope_base),
        )
        if cfg.vision is not None:
            model = FusionModel(VisionEncoder(cfg.vision, cfg.dim), model)
    if not model.output_weight().is_meta:
        model.init_weights()
    return model


def _build_layer(cfg: DecoderConfig) -> TransformerSelfAttentionLayer:
    return TransformerSelfAttentionLayer(
        attn=_build_attention(cfg),
        mlp=_build_mlp(cfg),
        attn_norm=_norm(cfg, cfg.dim),
        mlp_norm=_norm(cfg, cfg.dim),
        attn_post_norm=_norm(cfg, cfg.dim) if cfg.post_norms else None,
        mlp_post_norm=_norm(cfg, cfg.dim) if cfg.post_norms else None,
    )


def _build_cross_layer(cfg: DecoderConfig) -> TransformerCrossAttentionLayer:
    attn = CrossAttention(
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        q_norm=_norm(cfg, cfg.head_dim),
        k_norm=_norm(cfg, cfg.head_dim),
    )
    return TransformerCrossAttentionLayer(
        attn, _build_mlp(cfg), attn_norm=_norm(cfg, cfg.dim), mlp_norm=_norm(cfg, cfg.dim)
    )


def _build_mlp(cfg: DecoderConfig) -> nn.Module:
    if cfg.n_experts is None:
        return FeedForward(cfg.dim, cfg.hidden_dim, cfg.mlp_bias, cfg.activation)
    return MoEFeedForward(
        cfg.dim,
        cfg.expert_hidden_dim,
        cfg.n_experts,
        cfg.experts_per_token,
        cfg.norm_topk_prob,
        cfg.activation,
        shared_hidden_dim=cfg.shared_expert_hidden_dim,
        shared_gate=cfg.shared_expert_gate,
    )


def _build_attention(cfg: DecoderConfig) -> MultiHeadAttention:
    scalar = cfg.query_pre_attn_scalar
    return MultiHeadAttention(
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        bias=cfg.attn_bias or cfg.qkv_bias,
        o_bias=cfg.attn_bias,
        q_norm=_norm(cfg, cfg.head_dim) if cfg.qk_norm else None,
        k_norm=_norm(cfg, cfg.head_dim) if cfg.qk_norm else None,
        scale=None if scalar is None else scalar**-0.5,
        softcap=cfg.attn_softcap,
    )


def _norm(cfg: DecoderConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.norm_eps, cfg.norm_offset)


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Create parameters directly in ``dtype`` instead of allocating fp32 and converting."""
    if dtype is None:
        yield
        return
    if not dtype.is_floating_point:
        raise ValueError(f"build_model: dtype={dtype} must be a floating-point dtype")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def transformer_decoder(
    *,
    vocab_size: int,
    dim: int,
    n_layers: int,
    n_heads: int,
    hidden_dim: int,
    n_kv_heads: int | None = None,
    head_dim: int | None = None,
    max_seq_len: int = 4096,
    norm_eps: float = 1e-5,
    rope_base: float = 10_000.0,
    rope_scaling: dict[str, Any] | None = None,
    tie_embeddings: bool = False,
    attn_bias: bool = False,
    mlp_bias: bool = False,
    device: Device = None,
    dtype: torch.dtype | None = None,
) -> TransformerDecoder:
    """Component builder of the Llama family: every dimension is an argument.

    See ``DecoderConfig`` for the meaning of each argument.
    """
    cfg = DecoderConfig(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        hidden_dim=hidden_dim,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        max_seq_len=max_seq_len,
        norm_eps=norm_eps,
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        tie_embeddings=tie_embeddings,
        attn_bias=attn_bias,
        mlp_bias=mlp_bias,
    )
    return build_model(cfg, device=device, dtype=dtype)


def llama3_2_vision(
    *,
    vocab_size: int,
    dim: int,
    n_layers: int,
    n_heads: int,
    hidden_dim: int,
    cross_attention_layers: Sequence[int],
    image_token_id: int,
    vision: dict[str, Any],
    n_kv_heads: int | None = None,
    max_seq_len: int = 4096,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000.0,
    rope_scaling: dict[str, Any] | None = None,
    device: Device = None,
    dtype: torch.dtype | None = None,
) -> FusionModel:
    """Component builder of Llama 3.2 Vision: every dimension is an argument.

    ``vision`` holds ``VisionConfig``'s arguments (the image encoder); the decoder has
    ``n_layers`` layers of which ``cross_attention_layers`` read the images, and 8 token
    embeddings after the vocabulary (``image_token_id`` may be one of them). See
    ``DecoderConfig`` for the rest.
    """
    cfg = DecoderConfig(
        model_type="mllama",
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=hidden_dim,
        max_seq_len=max_seq_len,
        norm_eps=norm_eps,
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        extra_token_embeddings=8,
        cross_attention_layers=tuple(cross_attention_layers),
        image_token_id=image_token_id,
        vision=VisionConfig(**vision),
    )
    return build_model(cfg, device=device, dtype=dtype)
