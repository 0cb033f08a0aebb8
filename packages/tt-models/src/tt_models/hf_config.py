"""Conversion between ``DecoderConfig`` and a transformers ``config.json`` dict, per family.

Each supported ``model_type`` is a ``_Family``: the ``DecoderConfig`` switches the family fixes
(Gemma's norm offset, Qwen2's q/k/v biases, ...), the config.json keys it reads, and how it lays
out sliding-window layers. Adding a Llama-like family is adding an entry to ``_FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tt_models.config import DecoderConfig, normalize_rope_scaling

_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# transformers' default RoPE theta when a config names none.
_DEFAULT_ROPE_THETA = 10_000.0
# config.json activation names -> DecoderConfig.activation. Gemma's original releases wrote
# "gelu" while meaning the tanh approximation (transformers converts it the same way).
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_GEMMA_ACTIVATIONS = {**_ACTIVATIONS, "gelu": "gelu_tanh"}


@dataclass(frozen=True)
class _Family:
    """How one transformers ``model_type`` maps onto ``DecoderConfig``."""

    architecture: str
    fixed: dict[str, Any] = field(default_factory=dict)  # DecoderConfig switches it implies
    activation_key: str = "hidden_act"
    activations: dict[str, str] = field(default_factory=lambda: _ACTIVATIONS)
    default_activation: str = "silu"
    default_tie: bool = False
    default_eps: float = 1e-6
    # "none", "all" (every layer slides), "qwen" (use_sliding_window, layers from
    # max_window_layers on) or "alternate" (even layers slide, Gemma 2).
    sliding: str = "none"
    has_attn_bias: bool = False  # config.json attention_bias switches q/k/v/o biases
    has_mlp_bias: bool = False


_GEMMA_FIXED = {"norm_offset": 1.0, "scale_embeddings": True}
_FAMILIES: dict[str, _Family] = {
    "llama": _Family("LlamaForCausalLM", has_attn_bias=True, has_mlp_bias=True),
    "mistral": _Family("MistralForCausalLM", sliding="all"),
    "qwen2": _Family("Qwen2ForCausalLM", fixed={"qkv_bias": True}, sliding="qwen"),
    "qwen3": _Family(
        "Qwen3ForCausalLM", fixed={"qk_norm": True}, sliding="qwen", has_attn_bias=True
    ),
    "gemma": _Family(
        "GemmaForCausalLM",
        fixed=_GEMMA_FIXED,
        activations=_GEMMA_ACTIVATIONS,
        default_activation="gelu_pytorch_tanh",
        default_tie=True,
        has_attn_bias=True,
    ),
    "gemma2": _Family(
        "Gemma2ForCausalLM",
        fixed={**_GEMMA_FIXED, "post_norms": True},
        activation_key="hidden_activation",
        activations=_GEMMA_ACTIVATIONS,
        default_activation="gelu_pytorch_tanh",
        default_tie=True,
        sliding="alternate",
        has_attn_bias=True,
    ),
    "phi3": _Family("Phi3ForCausalLM", default_eps=1e-5, sliding="all"),
}
SUPPORTED_MODEL_TYPES = tuple(_FAMILIES)
# DecoderConfig fields that differ between families (not dimensions).
_SWITCHES = (
    "attn_bias",
    "mlp_bias",
    "qkv_bias",
    "qk_norm",
    "norm_offset",
    "scale_embeddings",
    "post_norms",
    "sliding_window",
    "layer_types",
    "attn_softcap",
    "final_softcap",
    "query_pre_attn_scalar",
)
# Gemma 2 defaults when config.json omits them (transformers' Gemma2Config defaults).
_GEMMA2_DEFAULTS = {
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 256,
}


def from_hf_config(config: dict[str, Any]) -> DecoderConfig:
    """Read a transformers ``config.json`` dict into a ``DecoderConfig``.

    Supports the ``model_type`` values in ``SUPPORTED_MODEL_TYPES`` (llama, mistral, qwen2,
    qwen3, gemma, gemma2, phi3). Accepts the transformers 5 RoPE form (``rope_parameters``) and
    the older one (top-level ``rope_theta`` and ``rope_scaling``).
    """
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(
            f"from_hf_config: config.json model_type={model_type!r} is not supported; "
            f"supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    family = _FAMILIES[model_type]
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(
            f"from_hf_config: config.json (model_type {model_type!r}) lacks keys {missing}"
        )
    rope_base, rope_scaling = _read_rope(config)
    sliding_window, layer_types = _read_sliding(config, family)
    return DecoderConfig(
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads"),
        head_dim=config.get("head_dim"),
        hidden_dim=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        norm_eps=config.get("rms_norm_eps", family.default_eps),
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        tie_embeddings=config.get("tie_word_embeddings", family.default_tie),
        attn_bias=family.has_attn_bias and config.get("attention_bias", False),
        mlp_bias=family.has_mlp_bias and config.get("mlp_bias", False),
        model_type=model_type,
        activation=_read_activation(config, model_type, family),
        sliding_window=sliding_window,
        layer_types=layer_types,
        **family.fixed,
        **(_read_gemma2(config) if model_type == "gemma2" else {}),
    )


def _read_activation(config: dict[str, Any], model_type: str, family: _Family) -> str:
    name = config.get(family.activation_key) or family.default_activation
    if name not in family.activations:
        raise ValueError(
            f"from_hf_config: config.json {family.activation_key}={name!r} is not supported for "
            f"model_type {model_type!r}; valid: {sorted(family.activations)}"
        )
    return family.activations[name]


def _read_gemma2(config: dict[str, Any]) -> dict[str, Any]:
    """Gemma 2's soft-capping and attention scale (null in config.json disables a cap)."""
    values = {key: config.get(key, default) for key, default in _GEMMA2_DEFAULTS.items()}
    return {
        "attn_softcap": values["attn_logit_softcapping"],
        "final_softcap": values["final_logit_softcapping"],
        "query_pre_attn_scalar": values["query_pre_attn_scalar"],
    }


def _read_sliding(config: dict[str, Any], family: _Family) -> tuple[int | None, list | None]:
    """Return ``(sliding_window, layer_types)`` as transformers would lay them out."""
    window = config.get("sliding_window")
    if family.sliding == "none" or window is None:
        return None, None
    if family.sliding == "qwen" and not config.get("use_sliding_window", False):
        # Qwen configs carry a sliding_window value that is off unless use_sliding_window.
        return None, None
    if config.get("layer_types") is not None:
        return window, config["layer_types"]
    n_layers = config["num_hidden_layers"]
    if family.sliding == "alternate":
        return window, [_layer_type(i % 2 == 0) for i in range(n_layers)]
    if family.sliding == "qwen":
        first = config.get("max_window_layers", 28)
        return window, [_layer_type(i >= first) for i in range(n_layers)]
    return window, None


def _layer_type(sliding: bool) -> str:
    return "sliding_attention" if sliding else "full_attention"


def _read_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Return ``(rope_base, rope_scaling)`` from either config.json form."""
    if config.get("rope_parameters") is not None:
        params, source = config["rope_parameters"], "config.json rope_parameters"
    else:
        params, source = config.get("rope_scaling") or {}, "config.json rope_scaling"
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(
            f"{source}: partial_rotary_factor={partial} is not supported; only 1.0 (RoPE over "
            "the whole head) is"
        )
    theta = params.get("rope_theta", config.get("rope_theta", _DEFAULT_ROPE_THETA))
    # Pre-4.45 files spell the scaling kind "type" rather than "rope_type".
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    return float(theta), normalize_rope_scaling({**params, "rope_type": rope_type}, source)


def to_hf_config(cfg: DecoderConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Write ``cfg`` as a transformers 5 ``config.json`` dict of its ``cfg.model_type``.

    ``dtype`` is recorded as the checkpoint's weight dtype. Raises if ``cfg`` sets a switch its
    family cannot express (e.g. ``qk_norm`` on a "llama" config).
    """
    if cfg.model_type not in _FAMILIES:
        raise ValueError(
            f"to_hf_config: DecoderConfig model_type={cfg.model_type!r} is not supported; "
            f"supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    family = _FAMILIES[cfg.model_type]
    _check_expressible(cfg, family)
    rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        rope_parameters = {**cfg.rope_scaling, "rope_theta": cfg.rope_base}
    activation = {v: k for k, v in _ACTIVATIONS.items()}[cfg.activation]
    hf = {
        "architectures": [family.architecture],
        "model_type": cfg.model_type,
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        family.activation_key: activation,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings,
        # Special tokens belong to the tokenizer; None keeps transformers from assuming its
        # family defaults (Phi-3's 32000 is outside a smaller vocabulary).
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if family.has_attn_bias:
        hf["attention_bias"] = cfg.attn_bias
    if family.has_mlp_bias:
        hf["mlp_bias"] = cfg.mlp_bias
    hf.update(_sliding_fields(cfg, family))
    if cfg.model_type == "gemma2":
        hf["attn_logit_softcapping"] = cfg.attn_softcap
        hf["final_logit_softcapping"] = cfg.final_softcap
        hf["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar
    return hf


def _sliding_fields(cfg: DecoderConfig, family: _Family) -> dict[str, Any]:
    if family.sliding == "none":
        return {}
    layer_types = cfg.layer_types
    if cfg.sliding_window is not None and layer_types is None:
        layer_types = ["sliding_attention"] * cfg.n_layers
    fields: dict[str, Any] = {"sliding_window": cfg.sliding_window}
    if family.sliding == "qwen":
        fields["use_sliding_window"] = cfg.sliding_window is not None
    if family.sliding in ("qwen", "alternate") and layer_types is not None:
        fields["layer_types"] = list(layer_types)
    return fields


def _check_expressible(cfg: DecoderConfig, family: _Family) -> None:
    """Every switch must be one the family's config.json can carry."""
    defaults = DecoderConfig(vocab_size=1, dim=2, n_layers=1, n_heads=1, hidden_dim=1)
    variable = {"activation", "model_type"}
    if family.has_attn_bias:
        variable.add("attn_bias")
    if family.has_mlp_bias:
        variable.add("mlp_bias")
    if family.sliding != "none":
        variable |= {"sliding_window", "layer_types"}
    if cfg.model_type == "gemma2":
        variable |= {"attn_softcap", "final_softcap", "query_pre_attn_scalar"}
    if family.sliding == "all" and cfg.layer_types is not None:
        raise ValueError(
            f"to_hf_config: model_type {cfg.model_type!r} slides in every layer or none; "
            f"layer_types={list(cfg.layer_types)} cannot be written"
        )
    for name in _SWITCHES:
        expected = family.fixed.get(name, getattr(defaults, name))
        if name not in variable and getattr(cfg, name) != expected:
            raise ValueError(
                f"to_hf_config: model_type {cfg.model_type!r} cannot express "
                f"{name}={getattr(cfg, name)!r} (this family has {name}={expected!r})"
            )
