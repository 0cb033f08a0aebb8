"""Helpers for the tt_models tests: tiny transformers Llama configs and HF <-> tt key renaming.

The key renaming lives here because tt_models must not import tt_ckpt. ``conftest.py`` puts this
directory on ``sys.path`` so that test modules can import it under pytest's importlib mode.
"""

from __future__ import annotations

import re

import torch
from tt_models import TransformerDecoder, transformer_decoder

# (HF pattern, tt replacement), applied to keys after the "model." prefix is stripped.
_HF_TO_TT = [
    (r"^embed_tokens\.", "tok_embeddings."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".mlp_norm."),
    (r"\.self_attn\.", ".attn."),
    (r"^lm_head\.", "output."),
]


def hf_to_tt_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers Llama state dict to tt keys (docs/CONTRACTS.md).

    A tied ``lm_head.weight`` (the embedding tensor itself) is dropped, as ``save_pretrained`` does.
    """
    renamed = {}
    embedding = hf_state["model.embed_tokens.weight"]
    for key, value in hf_state.items():
        if key == "lm_head.weight" and value.data_ptr() == embedding.data_ptr():
            continue
        key = key.removeprefix("model.")
        for pattern, replacement in _HF_TO_TT:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def tt_to_hf_state_dict(tt_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``hf_to_tt_state_dict``."""
    renamed = {}
    for key, value in tt_state.items():
        key = key.replace(".attn_norm.", ".input_layernorm.")
        key = key.replace(".mlp_norm.", ".post_attention_layernorm.").replace(
            ".attn.", ".self_attn."
        )
        key = key.replace("tok_embeddings.", "embed_tokens.")
        renamed["lm_head.weight" if key == "output.weight" else f"model.{key}"] = value
    return renamed


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
