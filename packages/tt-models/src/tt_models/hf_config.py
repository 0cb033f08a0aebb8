"""Conversion between ``DecoderConfig`` and a transformers ``config.json`` dict, per family.

What each ``model_type`` fixes and how its config.json spells it is its record in
``tt_models.families``; this module only reads and writes the JSON.
"""

from __future__ import annotations

from typing import Any

import torch

from tt_models.config import DecoderConfig, normalize_rope_scaling
from tt_models.families import (
    ACTIVATIONS,
    SUPPORTED_MODEL_TYPES,
    VISION_FAMILIES,
    Family,
    family,
)
from tt_models.vision import VisionConfig

__all__ = ["SUPPORTED_MODEL_TYPES", "from_hf_config", "to_hf_config"]

_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# transformers' default RoPE theta when a config names none.
_DEFAULT_ROPE_THETA = 10_000.0
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
    "local_rope_base",
    "n_experts",
    "experts_per_token",
    "moe_hidden_dim",
    "norm_topk_prob",
    "shared_expert_hidden_dim",
    "shared_expert_gate",
    "cross_attention_layers",
    "extra_token_embeddings",
    "vision",
    "image_token_id",
)
# Gemma 3's theta of local layers when its config.json predates per-layer-type RoPE.
_DEFAULT_LOCAL_ROPE_THETA = 10_000.0


def from_hf_config(config: dict[str, Any]) -> DecoderConfig:
    """Read a transformers ``config.json`` dict into a ``DecoderConfig``.

    Supports the ``model_type`` values in ``SUPPORTED_MODEL_TYPES`` (llama, mistral, qwen2,
    qwen3, gemma, gemma2, gemma3_text, qwen3_moe, qwen2_moe, mixtral, phi3). Accepts the transformers 5
    RoPE form (``rope_parameters``) and the older one (top-level ``rope_theta`` and
    ``rope_scaling``).
    """
    model_type = config.get("model_type")
    record = family(model_type, "from_hf_config: config.json")
    if model_type in VISION_FAMILIES:
        return _from_vision_config(config, model_type, record)
    return _decoder_config(config, model_type, record)


def _decoder_config(
    config: dict[str, Any], model_type: str, record: Family, **extra: Any
) -> DecoderConfig:
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(
            f"from_hf_config: config.json (model_type {model_type!r}) lacks keys {missing}"
        )
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise ValueError(
            f"from_hf_config: config.json mlp_only_layers={config.get('mlp_only_layers')} / "
            f"decoder_sparse_step={config.get('decoder_sparse_step')}: tt's mixture-of-experts "
            "models have experts in every layer ([] / 1)"
        )
    rope_base, rope_scaling, local_rope_base = _read_rope(config, record)
    sliding_window, layer_types = _read_sliding(config, record)
    return DecoderConfig(
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads"),
        head_dim=config.get("head_dim"),
        hidden_dim=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        norm_eps=config.get("rms_norm_eps", record.default_eps),
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        local_rope_base=local_rope_base,
        tie_embeddings=config.get("tie_word_embeddings", record.default_tie),
        attn_bias=record.has_attn_bias and config.get("attention_bias", False),
        mlp_bias=record.has_mlp_bias and config.get("mlp_bias", False),
        model_type=model_type,
        activation=_read_activation(config, model_type, record),
        sliding_window=sliding_window,
        layer_types=layer_types,
        **record.fixed,
        **record.read_fields(config),
        **extra,
    )


# transformers' MllamaVisionConfig keys -> VisionConfig fields.
_VISION_KEYS = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_global_layers": "n_global_layers",
    "attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
    "image_size": "tile_size",
    "patch_size": "patch_size",
    "max_num_tiles": "max_num_tiles",
    "intermediate_layers_indices": "intermediate_layers",
    "supported_aspect_ratios": "aspect_ratios",
    "norm_eps": "norm_eps",
    "num_channels": "n_channels",
}
# transformers' MllamaVisionConfig / MllamaTextConfig defaults, for keys a config.json leaves
# out (the Hub's 90B config states little more than what differs from them).
_VISION_DEFAULTS = {
    "hidden_size": 1280, "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16,
    "intermediate_size": 5120, "image_size": 448, "patch_size": 14, "max_num_tiles": 4,
    "intermediate_layers_indices": [3, 7, 15, 23, 30], "norm_eps": 1e-5, "num_channels": 3,
}  # fmt: skip
_VISION_TEXT_DEFAULTS = {
    "vocab_size": 128_256, "hidden_size": 4096, "intermediate_size": 14_336,
    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
}  # fmt: skip


def _from_vision_config(config: dict[str, Any], model_type: str, record: Family) -> DecoderConfig:
    """A vision model's config.json: ``text_config`` is the decoder, ``vision_config`` the
    image encoder."""
    text, vision = config.get("text_config"), config.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise ValueError(
            f"from_hf_config: config.json (model_type {model_type!r}) needs text_config and "
            "vision_config objects"
        )
    if vision.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"from_hf_config: config.json vision_config.hidden_act={vision['hidden_act']!r} is "
            "not supported; the image encoder uses 'gelu'"
        )
    values = {**_VISION_DEFAULTS, **vision}
    encoder = VisionConfig(
        **{name: values[key] for key, name in _VISION_KEYS.items() if key in values}
    )
    if vision.get("vision_output_dim", encoder.output_dim) != encoder.output_dim:
        raise ValueError(
            f"from_hf_config: config.json vision_config.vision_output_dim="
            f"{vision['vision_output_dim']} is not hidden_size x (1 + intermediate layers) = "
            f"{encoder.output_dim}"
        )
    text = {
        **_VISION_TEXT_DEFAULTS,
        "tie_word_embeddings": config.get("tie_word_embeddings", False),
        **text,
    }
    return _decoder_config(
        text,
        model_type,
        record,
        cross_attention_layers=text["cross_attention_layers"],
        vision=encoder,
        image_token_id=config.get("image_token_index"),
    )


def _read_activation(config: dict[str, Any], model_type: str, record: Family) -> str:
    name = config.get(record.activation_key) or record.default_activation
    if name not in record.activations:
        raise ValueError(
            f"from_hf_config: config.json {record.activation_key}={name!r} is not supported for "
            f"model_type {model_type!r}; valid: {sorted(record.activations)}"
        )
    return record.activations[name]


def _read_sliding(config: dict[str, Any], record: Family) -> tuple[int | None, list | None]:
    """Return ``(sliding_window, layer_types)`` as transformers would lay them out."""
    window = config.get("sliding_window")
    if record.sliding == "none" or window is None:
        return None, None
    if record.sliding == "qwen" and not config.get("use_sliding_window", False):
        # Qwen configs carry a sliding_window value that is off unless use_sliding_window.
        return None, None
    if config.get("layer_types") is not None:
        return window, config["layer_types"]
    n_layers = config["num_hidden_layers"]
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern"))
    return window, record.layer_types(n_layers, config.get("max_window_layers"), pattern)


def _read_rope(
    config: dict[str, Any], record: Family
) -> tuple[float, dict[str, Any] | None, float | None]:
    """Return ``(rope_base, rope_scaling, local_rope_base)`` from either config.json form.

    transformers 5 writes Gemma 3's RoPE per layer kind (``rope_parameters`` keyed by
    "full_attention" and "sliding_attention"); older files have ``rope_local_base_freq``.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ValueError(
                "config.json rope_parameters.sliding_attention: rope_type="
                f"{local.get('rope_type')!r} is not supported; local layers take plain RoPE"
            )
        source = "config.json rope_parameters.full_attention"
        base, scaling = _read_rope_params(config, params["full_attention"], source)
        return base, scaling, float(local.get("rope_theta", _DEFAULT_LOCAL_ROPE_THETA))
    local_base = None
    if record.sliding == "pattern":
        local_base = float(config.get("rope_local_base_freq", _DEFAULT_LOCAL_ROPE_THETA))
    if params is not None:
        return (*_read_rope_params(config, params, "config.json rope_parameters"), local_base)
    scaling = config.get("rope_scaling") or {}
    return (*_read_rope_params(config, scaling, "config.json rope_scaling"), local_base)


def _read_rope_params(
    config: dict[str, Any], params: dict[str, Any], source: str
) -> tuple[float, dict[str, Any] | None]:
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
    record = family(cfg.model_type, "to_hf_config: DecoderConfig")
    _check_expressible(cfg, record)
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        rope_parameters = {**cfg.rope_scaling, "rope_theta": cfg.rope_base}
    if record.sliding == "pattern":
        local = cfg.rope_base if cfg.local_rope_base is None else cfg.local_rope_base
        rope_parameters = {
            "full_attention": rope_parameters,
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
    activation = {v: k for k, v in ACTIVATIONS.items()}[cfg.activation]
    hf = {
        "architectures": [record.architecture],
        "model_type": cfg.model_type,
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        record.activation_key: activation,
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
    if record.has_attn_bias:
        hf["attention_bias"] = cfg.attn_bias
    if record.has_mlp_bias:
        hf["mlp_bias"] = cfg.mlp_bias
    hf.update(_sliding_fields(cfg, record))
    hf.update({key: getattr(cfg, name) for key, (name, _) in record.fields.items()})
    if cfg.model_type in VISION_FAMILIES:
        return _vision_hf_config(cfg, hf)
    return hf


def _vision_hf_config(cfg: DecoderConfig, text: dict[str, Any]) -> dict[str, Any]:
    """Nest the decoder's keys as ``text_config`` beside the encoder's ``vision_config``."""
    architectures, dtype = text.pop("architectures"), text.pop("dtype")
    del text["head_dim"]  # MllamaTextConfig derives it (hidden_size / heads)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # it requires ints here
        if text[key] is None:
            del text[key]
    text.update(
        model_type="mllama_text_model", cross_attention_layers=list(cfg.cross_attention_layers)
    )
    vision = cfg.vision
    vision_config = {key: getattr(vision, name) for key, name in _VISION_KEYS.items()}
    vision_config.update(
        model_type="mllama_vision_model",
        hidden_act="gelu",
        vision_output_dim=vision.output_dim,
        intermediate_layers_indices=list(vision.intermediate_layers),
        supported_aspect_ratios=[list(r) for r in vision.aspect_ratios],
    )
    return {
        "architectures": architectures,
        "model_type": cfg.model_type,
        "dtype": dtype,
        "image_token_index": cfg.image_token_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "text_config": text,
        "vision_config": vision_config,
    }


def _sliding_fields(cfg: DecoderConfig, record: Family) -> dict[str, Any]:
    if record.sliding == "none":
        return {}
    layer_types = cfg.layer_types
    if cfg.sliding_window is not None and layer_types is None:
        layer_types = ["sliding_attention"] * cfg.n_layers
    fields: dict[str, Any] = {"sliding_window": cfg.sliding_window}
    if record.sliding == "qwen":
        fields["use_sliding_window"] = cfg.sliding_window is not None
    if record.sliding in ("qwen", "alternate", "pattern") and layer_types is not None:
        fields["layer_types"] = list(layer_types)
    return fields


def _check_expressible(cfg: DecoderConfig, record: Family) -> None:
    """Every switch must be one the family's config.json can carry."""
    defaults = DecoderConfig(vocab_size=1, dim=2, n_layers=1, n_heads=1, hidden_dim=1)
    variable = {"activation", "model_type", *(name for name, _ in record.fields.values())}
    if record.has_attn_bias:
        variable.add("attn_bias")
    if record.has_mlp_bias:
        variable.add("mlp_bias")
    if record.sliding != "none":
        variable |= {"sliding_window", "layer_types"}
    if record.sliding == "pattern":
        variable.add("local_rope_base")
    if cfg.model_type in VISION_FAMILIES:
        variable |= {"cross_attention_layers", "vision", "image_token_id"}
        if cfg.head_dim != cfg.dim // cfg.n_heads:
            raise ValueError(
                f"to_hf_config: model_type {cfg.model_type!r} has head_dim = dim / n_heads; "
                f"head_dim={cfg.head_dim} cannot be written"
            )
    if record.sliding == "all" and cfg.layer_types is not None:
        raise ValueError(
            f"to_hf_config: model_type {cfg.model_type!r} slides in every layer or none; "
            f"layer_types={list(cfg.layer_types)} cannot be written"
        )
    for name in _SWITCHES:
        expected = record.fixed.get(name, getattr(defaults, name))
        if name not in variable and getattr(cfg, name) != expected:
            raise ValueError(
                f"to_hf_config: model_type {cfg.model_type!r} cannot express "
                f"{name}={getattr(cfg, name)!r} (this family has {name}={expected!r})"
            )
