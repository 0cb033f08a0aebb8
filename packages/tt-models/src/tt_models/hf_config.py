"""Conversion between ``DecoderConfig`` and a transformers ``config.json`` dict."""

from __future__ import annotations

from typing import Any

import torch

from tt_models.config import DecoderConfig, normalize_rope_scaling

SUPPORTED_MODEL_TYPES = ("llama",)
_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# transformers' default RoPE theta when a config names none.
_DEFAULT_ROPE_THETA = 10_000.0


def from_hf_config(config: dict[str, Any]) -> DecoderConfig:
    """Read a transformers ``config.json`` dict (``model_type`` "llama") into a ``DecoderConfig``.

    Accepts the transformers 5 form (``rope_parameters`` holding ``rope_theta``, ``rope_type``
    and scaling fields) and the older one (top-level ``rope_theta`` and ``rope_scaling``).
    """
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"from_hf_config: config.json model_type={model_type!r} is not supported; "
            f"supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"from_hf_config: config.json (model_type 'llama') lacks keys {missing}")
    activation = config.get("hidden_act", "silu")
    if activation != "silu":
        raise ValueError(
            f"from_hf_config: config.json hidden_act={activation!r} is not supported for "
            "model_type 'llama'; only 'silu' (SwiGLU) is"
        )
    rope_base, rope_scaling = _read_rope(config)
    return DecoderConfig(
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads"),
        head_dim=config.get("head_dim"),
        hidden_dim=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        tie_embeddings=config.get("tie_word_embeddings", False),
        attn_bias=config.get("attention_bias", False),
        mlp_bias=config.get("mlp_bias", False),
    )


def _read_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Return ``(rope_base, rope_scaling)`` from either config.json form."""
    if config.get("rope_parameters") is not None:
        params, source = config["rope_parameters"], "config.json rope_parameters"
    else:
        params, source = config.get("rope_scaling") or {}, "config.json rope_scaling"
    theta = params.get("rope_theta", config.get("rope_theta", _DEFAULT_ROPE_THETA))
    # Pre-4.45 files spell the scaling kind "type" rather than "rope_type".
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    return float(theta), normalize_rope_scaling({**params, "rope_type": rope_type}, source)


def to_hf_config(cfg: DecoderConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Write ``cfg`` as a transformers 5 ``config.json`` dict loadable as ``LlamaForCausalLM``.

    ``dtype`` is recorded as the checkpoint's weight dtype.
    """
    rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        rope_parameters = {**cfg.rope_scaling, "rope_theta": cfg.rope_base}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attn_bias,
        "mlp_bias": cfg.mlp_bias,
    }
