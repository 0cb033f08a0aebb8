"""One record per transformers ``model_type``: everything tt knows about a family.

A family is the one decoder with some ``DecoderConfig`` switches set (Gemma's norm offset,
Qwen2's q/k/v biases, ...), plus how its ``config.json`` spells things: which keys it reads,
its activation names, how sliding-window layers are laid out. ``hf_config`` (config.json
in and out) and ``sizes`` (the published builders) both read these records; adding a
Llama-like family is adding an entry to ``FAMILIES`` (and a key map in tt_ckpt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# config.json activation names -> DecoderConfig.activation. Gemma's original releases wrote
# "gelu" while meaning the tanh approximation (transformers converts it the same way).
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
GEMMA_ACTIVATIONS = {**ACTIVATIONS, "gelu": "gelu_tanh"}


@dataclass(frozen=True)
class Family:
    """How one transformers ``model_type`` maps onto ``DecoderConfig``.

    Args:
        architecture: the transformers class written into ``config.json``.
        fixed: DecoderConfig switches the family implies (every model of it has them).
        activation_key / activations / default_activation: the config.json key naming the
            MLP activation, the names it may hold, and the default when absent.
        default_tie / default_eps: defaults of ``tie_word_embeddings`` / ``rms_norm_eps``.
        sliding: "none", "all" (every layer slides), "qwen" (``use_sliding_window``, layers
            from ``max_window_layers`` on), "alternate" (even layers slide, Gemma 2) or
            "pattern" (every ``sliding_window_pattern``-th layer is global, Gemma 3: 5 local
            to 1 global).
        has_attn_bias / has_mlp_bias: config.json ``attention_bias`` / ``mlp_bias`` switch
            the biases.
        fields: config.json keys read and written as they are, with the DecoderConfig field
            each fills and its default when absent (Gemma 2's soft-capping).
        aliases: another spelling of a ``fields`` key that config.json files may carry
            instead (transformers 5 writes Qwen3-MoE's ``num_experts`` as ``num_local_experts``).
    """

    architecture: str
    fixed: dict[str, Any] = field(default_factory=dict)
    activation_key: str = "hidden_act"
    activations: dict[str, str] = field(default_factory=lambda: ACTIVATIONS)
    default_activation: str = "silu"
    default_tie: bool = False
    default_eps: float = 1e-6
    sliding: str = "none"
    has_attn_bias: bool = False
    has_mlp_bias: bool = False
    fields: dict[str, tuple[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def read_fields(self, config: dict[str, Any]) -> dict[str, Any]:
        """The DecoderConfig values of ``fields`` in ``config`` (a config.json dict)."""
        values = {}
        for key, (name, default) in self.fields.items():
            alias = self.aliases.get(key)
            values[name] = config.get(key, config.get(alias, default) if alias else default)
        return values

    def layer_types(
        self, n_layers: int, first_full: int | None = None, pattern: int | None = None
    ) -> list[str] | None:
        """Per-layer attention kinds as transformers lays them out for this family."""
        if self.sliding == "alternate":
            return [layer_type(i % 2 == 0) for i in range(n_layers)]
        if self.sliding == "pattern":
            every = 6 if pattern is None else pattern
            return [layer_type((i + 1) % every != 0) for i in range(n_layers)]
        if self.sliding == "qwen":
            first = 28 if first_full is None else first_full
            return [layer_type(i >= first) for i in range(n_layers)]
        return None


def layer_type(sliding: bool) -> str:
    return "sliding_attention" if sliding else "full_attention"


_GEMMA_FIXED = {"norm_offset": 1.0, "scale_embeddings": True}
# What Gemma 2 and Gemma 3's config.json share (the activation under its newer key).
_GEMMA2_LIKE: dict[str, Any] = {
    "activation_key": "hidden_activation",
    "activations": GEMMA_ACTIVATIONS,
    "default_activation": "gelu_pytorch_tanh",
    "default_tie": True,
    "has_attn_bias": True,
}
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", has_attn_bias=True, has_mlp_bias=True),
    "mistral": Family("MistralForCausalLM", sliding="all"),
    "qwen2": Family("Qwen2ForCausalLM", fixed={"qkv_bias": True}, sliding="qwen"),
    "qwen3": Family(
        "Qwen3ForCausalLM", fixed={"qk_norm": True}, sliding="qwen", has_attn_bias=True
    ),
    "gemma": Family(
        "GemmaForCausalLM",
        fixed=_GEMMA_FIXED,
        activations=GEMMA_ACTIVATIONS,
        default_activation="gelu_pytorch_tanh",
        default_tie=True,
        has_attn_bias=True,
    ),
    "gemma2": Family(
        "Gemma2ForCausalLM",
        fixed={**_GEMMA_FIXED, "post_norms": True},
        sliding="alternate",
        **_GEMMA2_LIKE,
        # transformers' Gemma2Config defaults; null in config.json disables a cap
        fields={
            "attn_logit_softcapping": ("attn_softcap", 50.0),
            "final_logit_softcapping": ("final_softcap", 30.0),
            "query_pre_attn_scalar": ("query_pre_attn_scalar", 256),
        },
    ),
    # Gemma 3's text decoder: Gemma 2's norms with q/k norms, no soft-capping, 5 sliding
    # layers to 1 global, each kind with its own RoPE (the local theta in local_rope_base).
    "gemma3_text": Family(
        "Gemma3ForCausalLM",
        fixed={**_GEMMA_FIXED, "post_norms": True, "qk_norm": True},
        sliding="pattern",
        **_GEMMA2_LIKE,
        fields={
            "attn_logit_softcapping": ("attn_softcap", None),
            "final_logit_softcapping": ("final_softcap", None),
            "query_pre_attn_scalar": ("query_pre_attn_scalar", 256),
        },
    ),
    # Mixtures of experts: every layer's feed-forward is a router over experts.
    "qwen3_moe": Family(
        "Qwen3MoeForCausalLM",
        fixed={"qk_norm": True},
        sliding="qwen",
        has_attn_bias=True,
        fields={
            "num_experts": ("n_experts", 128),
            "num_experts_per_tok": ("experts_per_token", 8),
            "moe_intermediate_size": ("moe_hidden_dim", 768),
            "norm_topk_prob": ("norm_topk_prob", False),
        },
        aliases={"num_experts": "num_local_experts"},
    ),
    # Qwen1.5-MoE / Qwen2-MoE: Qwen2's attention, and a shared expert behind a sigmoid gate
    # beside the routed ones (transformers' Qwen2MoeConfig defaults).
    "qwen2_moe": Family(
        "Qwen2MoeForCausalLM",
        fixed={"qkv_bias": True, "shared_expert_gate": True},
        sliding="qwen",
        fields={
            "num_experts": ("n_experts", 60),
            "num_experts_per_tok": ("experts_per_token", 4),
            "moe_intermediate_size": ("moe_hidden_dim", 1408),
            "shared_expert_intermediate_size": ("shared_expert_hidden_dim", 5632),
            "norm_topk_prob": ("norm_topk_prob", False),
        },
    ),
    "mixtral": Family(
        "MixtralForCausalLM",
        fixed={"norm_topk_prob": True},
        default_eps=1e-5,
        sliding="all",
        # the expert width is intermediate_size (moe_hidden_dim None: hidden_dim)
        fields={
            "num_local_experts": ("n_experts", 8),
            "num_experts_per_tok": ("experts_per_token", 2),
        },
    ),
    "phi3": Family("Phi3ForCausalLM", default_eps=1e-5, sliding="all"),
    # Llama 3.2 Vision: a Llama 3.1 text decoder with gated cross-attention layers, and an
    # image encoder. Its config.json nests the two (text_config, vision_config); the token
    # embedding has 8 rows more than the vocabulary (the image token among them).
    "mllama": Family(
        "MllamaForConditionalGeneration", fixed={"extra_token_embeddings": 8}, default_eps=1e-5
    ),
}
# Families whose config.json nests a text decoder's config and a vision encoder's.
VISION_FAMILIES = ("mllama",)
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def family(model_type: str | None, where: str) -> Family:
    """The record of ``model_type``, or a ValueError naming ``where`` it came from."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where} model_type={model_type!r} is not supported; supported model types: "
            f"{list(SUPPORTED_MODEL_TYPES)}"
        )
    return FAMILIES[model_type]
