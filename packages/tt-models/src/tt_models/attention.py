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

    Args:
        bias: q/k/v projections have biases.
        o_bias: the output projection has a bias; None means the same as ``bias``
            (Qwen2 has q/k/v biases only).
        q_norm, k_norm: modules applied to each query/key head ``[..., head_dim]`` before RoPE
            (Qwen3's RMSNorm); None skips them.
        scale: attention score scale; None means ``head_dim ** -0.5``.
        softcap: attention scores become ``softcap * tanh(scores / softcap)`` before masking
            (Gemma 2). SDPA cannot do this, so such layers compute attention explicitly.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        bias: bool = False,
        *,
        o_bias: bool | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        scale: float | None = None,
        softcap: float | None = None,
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
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias if o_bias is None else o_bias)
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
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
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # [b, heads, s, head_dim]
        if self.kv_cache is not None:
            if mask is None or input_pos is None:
                raise ValueError("MultiHeadAttention with a KV-cache needs both mask and input_pos")
            k, v = self.kv_cache.update(input_pos, k, v)
            # A cache set up in another dtype is read back in the compute dtype.
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.softcap is None:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if mask is None else mask[:, None],
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        else:
            out = self._softcapped_attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))

    def _softcapped_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Explicit attention with tanh soft-capped scores; q ``[b, h, s, d]``, k/v
        ``[b, kv_h, kv_len, d]`` -> ``[b, h, s, d]``."""
        group = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # [b, h, s, kv_len]
        scores = self.softcap * torch.tanh(scores / self.softcap)
        if mask is None:
            mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask[:, None] if mask.dim() == 3 else ~mask, float("-inf"))
        # Softmax in fp32 so that bf16 scores do not lose the small probabilities.
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return weights @ v
