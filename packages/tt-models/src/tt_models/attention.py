"""Multi-head attention with grouped (GQA) or multi-query (MQA) key/value heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tt_models.kv_cache import KVCache
from tt_models.rope import apply_rope


class MultiHeadAttention(nn.Module):
    """Self-attention with RoPE, an optional KV-cache and ``scaled_dot_product_attention``.

    ``n_kv_heads`` < ``n_heads`` gives GQA (``n_kv_heads == 1``: MQA); each key/value head
    serves ``n_heads // n_kv_heads`` consecutive query heads, as in Hugging Face Llama.
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, bias: bool = False
    ) -> None:
        super().__init__()
        if n_heads % n_kv_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}"
            )
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias)
        self.kv_cache: KVCache | None = None

    def setup_cache(self, batch_size: int, max_seq_len: int, dtype: torch.dtype) -> None:
        """Attach a fresh ``KVCache`` on the device of this layer's weights."""
        self.kv_cache = KVCache(
            batch_size,
            max_seq_len,
            self.n_kv_heads,
            self.head_dim,
            dtype,
            self.k_proj.weight.device,
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` ``[b, s, dim]``; returns ``[b, s, dim]``.

        Args:
            rope: ``(cos, sin)``, each ``[b, s, head_dim]``, from ``RotaryEmbedding``.
            mask: boolean ``[b, s, kv_len]``, True where a query may attend to a key; None means
                causal. Required with a KV-cache (``kv_len`` is then the cache length).
            input_pos: ``[b, s]`` cache slots to write; required with a KV-cache.
        """
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # [b, heads, s, head_dim]
        if self.kv_cache is not None:
            if mask is None or input_pos is None:
                raise ValueError("MultiHeadAttention with a KV-cache needs both mask and input_pos")
            k, v = self.kv_cache.update(input_pos, k, v)
            # A cache set up in another dtype is read back in the compute dtype.
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if mask is None else mask[:, None],
            is_causal=mask is None,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))
