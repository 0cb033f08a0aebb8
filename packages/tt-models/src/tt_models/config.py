"""``DecoderConfig``: every dimension of a decoder-only transformer in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tt_models.vision import VisionConfig

LLAMA3_SCALING_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)
SUPPORTED_ROPE_SCALING_TYPES = ("llama3", "linear")
ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class DecoderConfig:
    """Architecture of a decoder-only transformer (Llama layout plus per-family switches).

    Each family (Qwen, Mistral, Gemma, Phi-3, ...) is this dataclass with some switches set;
    every switch defaults to the Llama behaviour, and ``build_model`` picks the small module a
    switch asks for.

    Args:
        vocab_size: number of token embeddings and output logits.
        dim: model (residual stream) width.
        n_layers: number of transformer blocks.
        n_heads: query heads per attention layer.
        n_kv_heads: key/value heads (GQA when < n_heads, MQA when 1); None means n_heads.
        hidden_dim: inner width of the SwiGLU feed-forward.
        head_dim: width of one head; None means ``dim // n_heads``.
        max_seq_len: longest context the model was trained for.
        norm_eps: epsilon of every RMSNorm.
        rope_base: RoPE theta.
        rope_scaling: None, or Llama 3.1 frequency scaling as a dict with ``rope_type`` ("llama3"),
            ``factor``, ``low_freq_factor``, ``high_freq_factor``,
            ``original_max_position_embeddings``; or ``{"rope_type": "linear", "factor": f}``
            (every frequency divided by ``f``, Gemma 3's global layers).
        local_rope_base: RoPE theta of the sliding-window layers, which then take no
            ``rope_scaling`` (Gemma 3); None: every layer uses ``rope_base``/``rope_scaling``.
        tie_embeddings: the output projection reuses the token-embedding weight.
        attn_bias: q/k/v/o projections have biases.
        mlp_bias: gate/up/down projections have biases.
        model_type: the transformers ``model_type`` this config converts to (``to_hf_config``)
            and the tt_ckpt key-map family of its checkpoints.
        qkv_bias: q/k/v (not o) projections have biases (Qwen2); implied by ``attn_bias``.
        qk_norm: RMSNorm over each query and key head before RoPE (Qwen3).
        activation: gate activation of the gated MLP, "silu" (SwiGLU) or "gelu_tanh" (GeGLU).
        norm_offset: RMSNorm scales by ``norm_offset + weight`` (Gemma stores ``weight - 1``: 1.0).
        scale_embeddings: multiply token embeddings by ``sqrt(dim)`` (Gemma).
        post_norms: also normalise the attention and MLP outputs before each residual add
            (Gemma 2 "sandwich" norms).
        sliding_window: a query sees only the last ``sliding_window`` positions (itself
            included) in sliding-window layers; None disables it.
        layer_types: per layer "full_attention" or "sliding_attention"; None means every layer
            slides when ``sliding_window`` is set.
        attn_softcap: attention scores become ``cap * tanh(scores / cap)`` (Gemma 2).
        final_softcap: logits become ``cap * tanh(logits / cap)`` (Gemma 2); see
            ``TransformerDecoder.logits_from_hidden``.
        query_pre_attn_scalar: attention scores are scaled by ``query_pre_attn_scalar ** -0.5``
            instead of ``head_dim ** -0.5`` (Gemma 2).
        n_experts: None (a dense feed-forward), or the number of experts of every layer's
            mixture-of-experts feed-forward (``tt_models.moe``; Qwen3-MoE, Mixtral).
        experts_per_token: experts each token is routed to (top-k).
        moe_hidden_dim: inner width of each expert; None means ``hidden_dim``.
        norm_topk_prob: renormalise the top-k router probabilities to sum to 1 (Mixtral).
        shared_expert_hidden_dim: None, or the inner width of a shared expert every token
            takes beside its routed ones (Qwen2-MoE).
        shared_expert_gate: the shared expert's output is scaled by a sigmoid gate (a
            ``dim -> 1`` linear; Qwen2-MoE).
        cross_attention_layers: indices (among the ``n_layers``) of the layers that are
            gated cross-attention layers reading images instead of self-attention blocks
            (Llama 3.2 Vision); None for a text model.
        extra_token_embeddings: rows of the token embedding after the ``vocab_size`` the
            output predicts: tokens the model reads but never writes (Llama 3.2 Vision's 8,
            its image token among them).
        vision: the image encoder of a vision model (``tt_models.vision.VisionConfig``);
            ``build_model`` then returns a ``FusionModel``. Needs ``cross_attention_layers``.
        image_token_id: the token that stands for an image in the text (``<|image|>``).
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    max_seq_len: int = 4096
    norm_eps: float = 1e-5
    rope_base: float = 10_000.0
    rope_scaling: dict[str, Any] | None = None
    local_rope_base: float | None = None
    tie_embeddings: bool = False
    attn_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"
    qkv_bias: bool = False
    qk_norm: bool = False
    activation: str = "silu"
    norm_offset: float = 0.0
    scale_embeddings: bool = False
    post_norms: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    n_experts: int | None = None
    experts_per_token: int = 2
    moe_hidden_dim: int | None = None
    norm_topk_prob: bool = False
    shared_expert_hidden_dim: int | None = None
    shared_expert_gate: bool = False
    cross_attention_layers: tuple[int, ...] | None = None
    extra_token_embeddings: int = 0
    vision: VisionConfig | None = None
    image_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        # Resolve the defaults so that two configs describing the same model compare equal.
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        _check_positive_int("n_kv_heads", self.n_kv_heads)
        _check_positive_int("head_dim", self.head_dim)
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"DecoderConfig: n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.n_kv_heads} (each key/value head serves a group of query heads)"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"DecoderConfig: head_dim={self.head_dim} must be even (RoPE rotates pairs)"
            )
        if not self.norm_eps > 0 or not self.rope_base > 0:
            raise ValueError(
                f"DecoderConfig: norm_eps={self.norm_eps} and rope_base={self.rope_base} "
                "must both be > 0"
            )
        self.norm_eps = float(self.norm_eps)
        self.rope_base = float(self.rope_base)
        if self.rope_scaling is not None:
            self.rope_scaling = normalize_rope_scaling(self.rope_scaling)
        if self.local_rope_base is not None:
            if not self.local_rope_base > 0:
                raise ValueError(
                    f"DecoderConfig: local_rope_base={self.local_rope_base!r} must be > 0 or None"
                )
            self.local_rope_base = float(self.local_rope_base)
        self._check_family_switches()

    def _check_family_switches(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"DecoderConfig: activation={self.activation!r} is not supported; "
                f"valid: {list(ACTIVATIONS)}"
            )
        if self.sliding_window is not None:
            _check_positive_int("sliding_window", self.sliding_window)
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
            bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
            if bad or len(self.layer_types) != self.n_layers:
                raise ValueError(
                    f"DecoderConfig: layer_types must list one of {list(LAYER_TYPES)} for each "
                    f"of the n_layers={self.n_layers} layers, got {list(self.layer_types)}"
                )
            # One spelling per model, so that equal architectures compare equal.
            if self.sliding_window is None or set(self.layer_types) == {"sliding_attention"}:
                self.layer_types = None
        if self.n_experts is not None:
            _check_positive_int("n_experts", self.n_experts)
            _check_positive_int("experts_per_token", self.experts_per_token)
            if self.experts_per_token > self.n_experts:
                raise ValueError(
                    f"DecoderConfig: experts_per_token={self.experts_per_token} must be at most "
                    f"n_experts={self.n_experts}"
                )
            _check_positive_int("expert_hidden_dim", self.expert_hidden_dim)
            if self.shared_expert_hidden_dim is not None:
                _check_positive_int("shared_expert_hidden_dim", self.shared_expert_hidden_dim)
        elif self.shared_expert_hidden_dim is not None or self.shared_expert_gate:
            raise ValueError(
                "DecoderConfig: shared_expert_hidden_dim/shared_expert_gate need n_experts "
                "(a shared expert sits beside routed ones)"
            )
        if self.shared_expert_gate and self.shared_expert_hidden_dim is None:
            raise ValueError("DecoderConfig: shared_expert_gate needs shared_expert_hidden_dim")
        for name in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DecoderConfig: {name}={value!r} must be > 0 or None")
        self._check_vision()

    def _check_vision(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if self.extra_token_embeddings < 0:
            raise ValueError(
                f"DecoderConfig: extra_token_embeddings={self.extra_token_embeddings} must be >= 0"
            )
        if self.extra_token_embeddings and self.tie_embeddings:
            raise ValueError(
                "DecoderConfig: extra_token_embeddings need an output layer of its own "
                "(tie_embeddings=False): the output predicts only the first vocab_size tokens"
            )
        if self.cross_attention_layers is not None:
            self.cross_attention_layers = tuple(int(i) for i in self.cross_attention_layers)
            bad = [i for i in self.cross_attention_layers if not 0 <= i < self.n_layers]
            if bad or len(set(self.cross_attention_layers)) != len(self.cross_attention_layers):
                raise ValueError(
                    f"DecoderConfig: cross_attention_layers={list(self.cross_attention_layers)} "
                    f"must be distinct layer indices in [0, {self.n_layers})"
                )
        if self.vision is not None and not self.cross_attention_layers:
            raise ValueError(
                "DecoderConfig: a vision encoder needs cross_attention_layers (the layers that "
                "read its output)"
            )
        if self.image_token_id is not None and not (
            0 <= self.image_token_id < self.vocab_size + self.extra_token_embeddings
        ):
            raise ValueError(
                f"DecoderConfig: image_token_id={self.image_token_id} is not a token of the "
                f"embedding (0..{self.vocab_size + self.extra_token_embeddings - 1})"
            )

    @property
    def embedding_rows(self) -> int:
        """Rows of the token embedding: the vocabulary plus ``extra_token_embeddings``."""
        return self.vocab_size + self.extra_token_embeddings

    def is_cross_attention_layer(self, layer: int) -> bool:
        return layer in (self.cross_attention_layers or ())

    @property
    def expert_hidden_dim(self) -> int:
        """Inner width of each expert (``moe_hidden_dim``, else ``hidden_dim``)."""
        return self.hidden_dim if self.moe_hidden_dim is None else self.moe_hidden_dim

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` (None: it attends to the whole context)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None


def normalize_rope_scaling(scaling: dict[str, Any], source: str = "rope_scaling") -> dict[str, Any]:
    """Check a RoPE scaling dict (Llama 3.1 or linear) and return it with canonical keys and
    types.

    ``source`` names where the dict came from, for the error message.
    """
    rope_type = scaling.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_SCALING_TYPES:
        raise ValueError(
            f"{source}: rope_type={rope_type!r} is not supported; "
            f"supported scaling types: {list(SUPPORTED_ROPE_SCALING_TYPES)}"
        )
    if rope_type == "linear":
        factor = scaling.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ValueError(f"{source}: linear rope scaling needs a factor > 0, got {factor!r}")
        return {"rope_type": "linear", "factor": float(factor)}
    missing = [key for key in LLAMA3_SCALING_KEYS if key not in scaling]
    if missing:
        raise ValueError(
            f"{source}: llama3 rope scaling is missing {missing}; "
            f"it needs all of {list(LLAMA3_SCALING_KEYS)} (got keys {sorted(scaling)})"
        )
    normalized = {
        "rope_type": rope_type,
        "factor": float(scaling["factor"]),
        "low_freq_factor": float(scaling["low_freq_factor"]),
        "high_freq_factor": float(scaling["high_freq_factor"]),
        "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
    }
    if not normalized["high_freq_factor"] > normalized["low_freq_factor"]:
        raise ValueError(
            f"{source}: high_freq_factor={normalized['high_freq_factor']} must be greater than "
            f"low_freq_factor={normalized['low_freq_factor']}"
        )
    return normalized


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"DecoderConfig: {name}={value!r} must be a positive integer")
