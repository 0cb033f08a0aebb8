"""Helpers for the tt_models tests: tiny transformers Llama configs and HF <-> tt key renaming.

The key renaming lives here because tt_models must not import tt_ckpt. ``conftest.py`` puts this
directory on ``sys.path`` so that test modules can import it under pytest's importlib mode.
"""

from __future__ import annotations

import re

import torch
from tt_models import TransformerDecoder, transformer_decoder

# Families whose decoder layers have Gemma 2's pre and post norms.
SANDWICH_NORMS = ("gemma2", "gemma3_text")
# (HF pattern, tt replacement), applied to keys after the "model." prefix is stripped.
_HF_TO_TT = [
    (r"^embed_tokens\.", "tok_embeddings."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".mlp_norm."),
    (r"\.self_attn\.", ".attn."),
    (r"^lm_head\.", "output."),
]
# Gemma 2 normalises each branch before and after: its post_attention_layernorm is the
# attention output norm, and the MLP has pre/post norms of its own.
_GEMMA2_NORMS = [
    (r"\.post_attention_layernorm\.", ".attn_post_norm."),
    (r"\.pre_feedforward_layernorm\.", ".mlp_norm."),
    (r"\.post_feedforward_layernorm\.", ".mlp_post_norm."),
]


def _renames(model_type: str) -> list[tuple[str, str]]:
    return _GEMMA2_NORMS + _HF_TO_TT if model_type in SANDWICH_NORMS else _HF_TO_TT


def hf_to_tt_state_dict(
    hf_state: dict[str, torch.Tensor], model_type: str = "llama", config: dict | None = None
) -> dict[str, torch.Tensor]:
    """Rename a transformers state dict of ``model_type`` to tt keys (docs/CONTRACTS.md).

    A tied ``lm_head.weight`` (the embedding tensor itself) is dropped, as ``save_pretrained``
    does. Phi-3's fused ``qkv_proj``/``gate_up_proj`` are split using ``config`` (config.json).
    """
    renamed = {}
    embedding = hf_state["model.embed_tokens.weight"]
    for key, value in hf_state.items():
        if key == "lm_head.weight" and value.data_ptr() == embedding.data_ptr():
            continue
        key = key.removeprefix("model.")
        for pattern, replacement in _renames(model_type):
            key = re.sub(pattern, replacement, key)
        renamed.update(_split_fused(key, value, config))
    return renamed


def _split_fused(key: str, value: torch.Tensor, config: dict | None) -> dict[str, torch.Tensor]:
    if key.endswith("qkv_proj.weight"):
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        q_rows = config["num_attention_heads"] * head_dim
        kv_rows = config["num_key_value_heads"] * head_dim
        q, k, v = value.split([q_rows, kv_rows, kv_rows])
        prefix = key.removesuffix("qkv_proj.weight")
        return {f"{prefix}{n}_proj.weight": t for n, t in zip("qkv", (q, k, v))}
    if key.endswith("gate_up_proj.weight"):
        gate, up = value.chunk(2)
        prefix = key.removesuffix("gate_up_proj.weight")
        return {f"{prefix}gate_proj.weight": gate, f"{prefix}up_proj.weight": up}
    # transformers 5 holds a layer's experts as [n_experts, ...] tensors (gate rows first);
    # tt has a FeedForward per expert and names the router mlp.router.
    if key.endswith("mlp.experts.gate_up_proj"):
        out = {}
        for e, fused in enumerate(value):
            gate, up = fused.chunk(2)
            out[f"{key.removesuffix('gate_up_proj')}{e}.gate_proj.weight"] = gate
            out[f"{key.removesuffix('gate_up_proj')}{e}.up_proj.weight"] = up
        return out
    if key.endswith("mlp.experts.down_proj"):
        return {
            f"{key.removesuffix('down_proj')}{e}.down_proj.weight": w for e, w in enumerate(value)
        }
    if key.endswith("mlp.gate.weight"):
        return {key.replace("mlp.gate.", "mlp.router."): value}
    if key.endswith("mlp.shared_expert_gate.weight"):
        return {key.replace("mlp.shared_expert_gate.", "mlp.shared_gate."): value}
    return {key: value}


# (tt text, HF text) replacements of the inverse renaming, in order.
_TT_TO_HF = [
    (".attn_norm.", ".input_layernorm."),
    (".mlp_norm.", ".post_attention_layernorm."),
    (".attn.", ".self_attn."),
    ("tok_embeddings.", "embed_tokens."),
]
_GEMMA2_TT_TO_HF = [
    (".attn_post_norm.", ".post_attention_layernorm."),
    (".mlp_norm.", ".pre_feedforward_layernorm."),
    (".mlp_post_norm.", ".post_feedforward_layernorm."),
    *_TT_TO_HF,
]


def tt_to_hf_state_dict(
    tt_state: dict[str, torch.Tensor], model_type: str = "llama"
) -> dict[str, torch.Tensor]:
    """Inverse of ``hf_to_tt_state_dict`` (re-fusing Phi-3's projections)."""
    replacements = _GEMMA2_TT_TO_HF if model_type in SANDWICH_NORMS else _TT_TO_HF
    renamed = {}
    for key, value in tt_state.items():
        for tt_text, hf_text in replacements:
            key = key.replace(tt_text, hf_text)
        renamed["lm_head.weight" if key == "output.weight" else f"model.{key}"] = value
    if model_type in ("qwen3_moe", "qwen2_moe", "mixtral"):
        return _stack_experts(renamed)
    return _fuse(renamed) if model_type == "phi3" else renamed


def _stack_experts(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tt's per-expert FeedForwards -> transformers 5's [n_experts, ...] tensors."""
    out, experts = {}, {}
    for key, value in hf_state.items():
        found = re.fullmatch(r"(.*\.mlp\.experts)\.(\d+)\.(\w+)_proj\.weight", key)
        if found:
            experts.setdefault(found[1], {}).setdefault(found[3], {})[int(found[2])] = value
        else:
            key = key.replace("mlp.router.", "mlp.gate.")
            out[key.replace("mlp.shared_gate.", "mlp.shared_expert_gate.")] = value
    for prefix, parts in experts.items():
        n = len(parts["gate"])
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([parts["gate"][e], parts["up"][e]]) for e in range(n)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([parts["down"][e] for e in range(n)])
    return out


def _fuse(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fused = {}
    for key, value in hf_state.items():
        if key.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")):
            continue
        if key.endswith("q_proj.weight"):
            prefix = key.removesuffix("q_proj.weight")
            parts = [hf_state[f"{prefix}{n}_proj.weight"] for n in "qkv"]
            fused[f"{prefix}qkv_proj.weight"] = torch.cat(parts)
        elif key.endswith("gate_proj.weight"):
            prefix = key.removesuffix("gate_proj.weight")
            parts = [hf_state[f"{prefix}{n}_proj.weight"] for n in ("gate", "up")]
            fused[f"{prefix}gate_up_proj.weight"] = torch.cat(parts)
        else:
            fused[key] = value
    return fused


TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that the tiny head_dim has frequencies in all three bands.
    "original_max_position_embeddings": 64,
}


def randomize_norms_and_biases(model: torch.nn.Module) -> None:
    """Norm weights start at 1 and biases at 0; randomise them so the tests can see them."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.copy_(torch.randn_like(param) * 0.5 + (1.0 if "norm" in name else 0.0))


def tiny_tt_model(**overrides) -> TransformerDecoder:
    """A random tiny tt_models decoder (GQA, llama3 RoPE scaling) in fp32 eval mode."""
    torch.manual_seed(0)
    args = dict(
        vocab_size=256,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=160,
        max_seq_len=128,
        rope_base=500_000.0,
        rope_scaling={**LLAMA3_ROPE},
    )
    model = transformer_decoder(**{**args, **overrides}).eval()
    randomize_norms_and_biases(model)
    return model


# Tiny configs of each family beyond Llama: (transformers config class name, overrides of TINY).
# Sliding windows are 8 so that the 24-token test sequences slide; Gemma 2's caps are small so
# that soft-capping changes the random model's scores and logits noticeably.
FAMILIES = {
    "qwen2": (
        "Qwen2Config",
        dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
    ),
    "qwen2_tied": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=32)),
    "mistral": ("MistralConfig", dict(sliding_window=8)),
    "gemma": ("GemmaConfig", dict(head_dim=16)),
    "gemma2": (
        "Gemma2Config",
        dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=0.1,
            final_logit_softcapping=3.0,
        ),
    ),
    "phi3": ("Phi3Config", dict(sliding_window=8)),
    # Mixtures of experts: top-2 of 4 without renormalisation, top-1 of 3 with it (the
    # renormalised weight is then 1), Mixtral's top-2 of 4 (always renormalised) sliding.
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48),
    ),
    "qwen3_moe_top1": (
        "Qwen3MoeConfig",
        dict(
            head_dim=16,
            num_experts=3,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            norm_topk_prob=True,
        ),
    ),  # fmt: skip
    # Qwen2-MoE: a shared expert (with its sigmoid gate) beside top-2 of 4 routed ones.
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
        ),
    ),  # fmt: skip
    "mixtral": (
        "MixtralConfig",
        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48, sliding_window=8),
    ),
    # Gemma 3: 5 local layers to 1 global (layer 5), the global ones with linear RoPE
    # scaling and a theta of their own.
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=6,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
    ),
    # ... and a window longer than the sequence, layers laid out by hand, no RoPE scaling.
    "gemma3_mixed": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=3,
            head_dim=16,
            sliding_window=64,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
    ),
}


def family_hf_model(name: str, **overrides) -> torch.nn.Module:
    """A random tiny transformers model of family ``name`` (a ``FAMILIES`` key), fp32 eval."""
    import transformers

    config_class, family_overrides = FAMILIES[name]
    config = getattr(transformers, config_class)(**{**TINY, **family_overrides, **overrides})
    # Soft-capping is only in the eager attention of transformers' Gemma 2.
    attn = "eager" if config.model_type == "gemma2" else "sdpa"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    randomize_norms_and_biases(hf)
    return hf


# transformers' Mllama (Llama 3.2 Vision) in-memory keys -> tt's FusionModel keys.
_MLLAMA_PREFIXES = [
    (
        r"^model\.language_model\.layers\.(\d+)\.cross_attn_attn_gate$",
        r"decoder.layers.\1.attn_gate",
    ),
    (r"^model\.language_model\.layers\.(\d+)\.cross_attn_mlp_gate$", r"decoder.layers.\1.mlp_gate"),
    (r"^model\.language_model\.embed_tokens\.", "decoder.tok_embeddings."),
    (r"^model\.language_model\.", "decoder."),
    (r"^lm_head\.", "decoder.output."),
    (r"^model\.multi_modal_projector\.", "encoder.projection."),
    (r"^model\.vision_model\.gated_positional_embedding\.", "encoder.position_embedding."),
    (r"^model\.vision_model\.pre_tile_positional_embedding\.", "encoder.pre_tile_embedding."),
    (r"^model\.vision_model\.post_tile_positional_embedding\.", "encoder.post_tile_embedding."),
    (r"^model\.vision_model\.layernorm_pre\.", "encoder.pre_norm."),
    (r"^model\.vision_model\.layernorm_post\.", "encoder.post_norm."),
    (r"^model\.vision_model\.transformer\.layers\.", "encoder.layers."),
    (r"^model\.vision_model\.global_transformer\.layers\.", "encoder.global_layers."),
    (r"^model\.vision_model\.", "encoder."),
]
_MLLAMA_LAYER_NAMES = [
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".mlp_norm."),
    (r"\.self_attn\.", ".attn."),
    (r"\.gate_attn$", ".attn_gate"),
    (r"\.gate_ffn$", ".mlp_gate"),
]


def mllama_to_tt_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``MllamaForConditionalGeneration`` state dict to tt keys."""
    renamed = {}
    for key, value in hf_state.items():
        for pattern, replacement in _MLLAMA_PREFIXES:
            if re.search(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        for pattern, replacement in _MLLAMA_LAYER_NAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed
