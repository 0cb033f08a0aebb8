"""Gated cross-attention: text tokens attending to image tokens (Llama 3.2 Vision).

A vision model's decoder holds a ``TransformerCrossAttentionLayer`` at each index of its
config's ``cross_attention_layers``; ``TransformerDecoder.forward`` hands those layers the image
tokens (``encoder_states``) and which of them each text token may see (``encoder_mask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Text queries over image keys/values: q/k/v/o projections, an RMSNorm over each query
    and key head, GQA, no RoPE. With caching on, the keys and values computed from the
    encoder states of the prompt are kept for the decode steps that follow."""

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int,
        q_norm: nn.Module, k_norm: nn.Module,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)
        self.q_norm, self.k_norm = q_norm, k_norm
        self.caching = False
        self.cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def has_cached_states(self) -> bool:
        return self.cached_kv is not None

    def forward(
        self, x: torch.Tensor, encoder_states: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``[b, s, dim]``; ``encoder_states`` ``[b, n, dim]`` (None: the cached ones);
        ``mask`` bool ``[b, s, n]`` (True: may attend) -> ``[b, s, dim]``."""
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
        if encoder_states is None:
            if self.cached_kv is None:
                raise ValueError("CrossAttention: no encoder states given and none cached")
            k, v = self.cached_kv
        else:
            n = encoder_states.shape[1]
            k = self.k_norm(self.k_proj(encoder_states).view(b, n, self.n_kv_heads, self.head_dim))
            k = k.transpose(1, 2)
            v = self.v_proj(encoder_states).view(b, n, self.n_kv_heads, self.head_dim)
            v = v.transpose(1, 2)
            if self.caching:
                self.cached_kv = (k, v)
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None],
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # fmt: skip
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))


class TransformerCrossAttentionLayer(nn.Module):
    """Pre-norm block whose attention reads the images: ``h = x + tanh(attn_gate) *
    attn(attn_norm(x), images)``, then ``h + tanh(mlp_gate) * mlp(mlp_norm(h))`` on rows that
    see an image. Both gates start at 0, so a new layer leaves the text model unchanged."""

    def __init__(
        self, cross_attn: CrossAttention, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module
    ) -> None:
        super().__init__()
        self.attn_norm = attn_norm
        # not "attn": its keys must differ from a self-attention layer's (checkpoint key maps)
        self.cross_attn = cross_attn
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, x: torch.Tensor, encoder_states: torch.Tensor | None, encoder_mask: torch.Tensor
    ) -> torch.Tensor:
        """``encoder_mask`` bool ``[b, s, n]``; a row with no True key sees no image."""
        sees_image = encoder_mask.any(-1, keepdim=True)  # [b, s, 1]
        mask = encoder_mask | ~sees_image
        h = x + self.attn_gate.tanh() * self.cross_attn(self.attn_norm(x), encoder_states, mask)
        mlp_out = self.mlp(self.mlp_norm(h)) * sees_image.to(h.dtype)
        return h + self.mlp_gate.tanh() * mlp_out
