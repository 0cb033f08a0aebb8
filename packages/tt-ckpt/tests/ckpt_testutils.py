"""Test helpers: tiny random-init transformers Llama models and hand-written tt naming."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

N_LAYERS = 2


def tiny_llama(tie: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 kv heads)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Random norms so a swapped norm weight would change the logits.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def expected_tt_keys(tied: bool = False) -> set[str]:
    """The tt naming from docs/CONTRACTS.md, written out by hand."""
    keys = {"tok_embeddings.weight", "norm.weight"}
    if not tied:
        keys.add("output.weight")
    for i in range(N_LAYERS):
        keys |= {f"layers.{i}.attn_norm.weight", f"layers.{i}.mlp_norm.weight"}
        keys |= {f"layers.{i}.attn.{p}_proj.weight" for p in "qkvo"}
        keys |= {f"layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    return keys


def hf_as_tt(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The model's state dict renamed by hand (independent of tt_ckpt.keymaps)."""
    names = {
        "model.embed_tokens": "tok_embeddings",
        "model.norm": "norm",
        "lm_head": "output",
        "model.layers": "layers",
        "self_attn": "attn",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "mlp_norm",
    }
    out = {}
    for key, tensor in model.state_dict().items():
        for old, new in names.items():
            key = key.replace(old, new)
        out[key] = tensor
    if model.config.tie_word_embeddings:
        out.pop("output.weight", None)
    return out


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=0, msg=key)


def write_tokenizer(path: Path) -> None:
    """Train a tiny byte-level BPE and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"])
    text = ["the quick brown fox jumps over the lazy dog"] * 50
    tokenizer.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


# Tiny transformers configs of the families beyond Llama (config class name, overrides).
FAMILY_CONFIGS = {
    "mistral": ("MistralConfig", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {"head_dim": 16, "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 24},
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            "num_experts": 3,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 24,
            "shared_expert_intermediate_size": 40,
        },
    ),  # fmt: skip
    "mixtral": ("MixtralConfig", {"num_local_experts": 3, "num_experts_per_tok": 2}),
    "phi3": ("Phi3Config", {}),
}


def tiny_family_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer GQA model of ``family`` with random norm weights and biases."""
    import transformers

    class_name, overrides = FAMILY_CONFIGS[family]
    config = getattr(transformers, class_name)(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **overrides,
    )
    torch.manual_seed(seed)
    attn = "eager" if family == "gemma2" else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.uniform_(0.5, 1.5)
    return model.eval()


def expected_family_tt_keys(family: str) -> set[str]:
    """The tt state-dict keys of a ``tiny_family_model``, written out by hand."""
    tied = family in ("gemma", "gemma2", "gemma3_text")
    keys = expected_tt_keys(tied=tied)
    for i in range(N_LAYERS):
        if family in ("qwen2", "qwen2_moe"):
            keys |= {f"layers.{i}.attn.{p}_proj.bias" for p in "qkv"}
        if family in ("qwen3", "gemma3_text", "qwen3_moe"):
            keys |= {f"layers.{i}.attn.q_norm.weight", f"layers.{i}.attn.k_norm.weight"}
        if family in ("gemma2", "gemma3_text"):
            keys |= {f"layers.{i}.attn_post_norm.weight", f"layers.{i}.mlp_post_norm.weight"}
        if family == "qwen2_moe":  # and a shared expert behind a gate
            keys |= {
                f"layers.{i}.mlp.shared_expert.{p}_proj.weight" for p in ("gate", "up", "down")
            }
            keys |= {f"layers.{i}.mlp.shared_gate.weight"}
        if family in ("qwen3_moe", "qwen2_moe", "mixtral"):  # a router and 3 experts, no MLP
            keys -= {f"layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
            keys |= {f"layers.{i}.mlp.router.weight"} | {
                f"layers.{i}.mlp.experts.{e}.{p}_proj.weight"
                for e in range(3)
                for p in ("gate", "up", "down")
            }
    return keys
