"""Each family's bundled LoRA config, end to end on a tiny random transformers model.

For every family tt supports: a random-init transformers model of the family (with the
architectural switches of the real checkpoint the config is for: tied embeddings, RoPE
scaling, sliding windows, soft-capping, biases) is saved with the tiny tokenizer, the bundled
``<family>/..._lora`` config trains it for 3 steps, and then three models must agree on the
logits of the trained checkpoint:

- ``peft.PeftModel`` loading ``step_N/adapter`` onto the original transformers model,
- ``transformers`` loading the merged ``step_N`` directory,
- tt's own model loaded from ``step_N``.

The adapter must also have moved the logits away from the base model's, so the equalities
are not those of an untrained (zero) adapter.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import peft
import pytest
import torch
import transformers
from omegaconf import OmegaConf
from recipe_testing import lora_overrides, losses, run_recipe
from safetensors.torch import load_file
from tt_recipes import from_pretrained
from tt_recipes.assets import asset_path
from tt_recipes.checkpointing import complete_step_dirs
from tt_recipes.registry import resolve_config

STEPS = 3
TOKENIZER_VOCAB = 456  # ids the tiny tokenizer can produce; the model's vocab is larger
PAD_ID, EOS_ID = 0, 2  # <|endoftext|>, <|im_end|> in the tiny tokenizer

# Shared tiny shapes: vocab 512, hidden 64, 2 layers, grouped-query attention.
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that the tiny head_dim has frequencies in all three scaling bands.
    "original_max_position_embeddings": 64,
}

# family -> (bundled LoRA config, transformers config class, what the real checkpoint sets).
# Sliding windows are 8 so that the 16-token probe sequences slide.
FAMILIES = {
    "llama": ("llama3_2/1B_lora", "LlamaConfig", dict(rope_parameters=LLAMA3_ROPE)),
    "smollm2": (
        "smollm2/135M_lora",
        "LlamaConfig",
        dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e5}),
    ),
    "qwen2": ("qwen2_5/0.5B_lora", "Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3/0.6B_lora", "Qwen3Config", dict(tie_word_embeddings=True, head_dim=32)),
    "mistral": ("mistral/7B_lora", "MistralConfig", dict(sliding_window=8)),
    "gemma": ("gemma/2B_lora", "GemmaConfig", dict(head_dim=16)),
    "gemma2": (
        "gemma2/2B_lora",
        "Gemma2Config",
        dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "gemma3/1B_lora",
        "Gemma3TextConfig",
        dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
    ),
    "phi3": ("phi3/mini_lora", "Phi3Config", dict(sliding_window=8)),
}


CASES = list(FAMILIES)


def randomize_norms_and_biases(model: torch.nn.Module) -> None:
    """Norms start at 1 (Gemma: 0) and biases at 0; random values make a wrong mapping show."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.3)


def load_hf(directory: Path) -> torch.nn.Module:
    # Eager attention: the only transformers path with Gemma 2's attention soft-capping.
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()


def save_tiny_model(family: str, directory: Path) -> None:
    """A random tiny transformers model of ``family`` with the tiny tokenizer beside it."""
    _, config_class, overrides = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize_norms_and_biases(model)
    model.save_pretrained(directory)
    for file in Path(asset_path("tiny_tokenizer")).iterdir():
        shutil.copy(file, directory / file.name)


def bundled_targets(config: str) -> list[str]:
    path, _ = resolve_config(config)
    return list(OmegaConf.load(path).peft.target_modules)


@pytest.mark.parametrize("family", CASES)
def test_bundled_lora_config_trains_and_saves_peft_and_merged_models(
    family: str, tmp_path: Path
) -> None:
    config = FAMILIES[family][0]
    model_dir, out = tmp_path / "model", tmp_path / "out"
    save_tiny_model(family, model_dir)
    run_recipe("lora_finetune", config, lora_overrides(model_dir, out, STEPS))

    history = losses(out / "logs")
    assert sorted(history) == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.values()), history
    (step_dir,) = complete_step_dirs(out)
    assert step_dir.name == f"step_{STEPS}"
    _check_adapter_files(step_dir / "adapter", bundled_targets(config))

    tokens = torch.randint(0, TOKENIZER_VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_model = load_hf(model_dir)
        base = base_model(tokens).logits
        adapted = peft.PeftModel.from_pretrained(base_model, step_dir / "adapter").eval()
        adapted_logits = adapted(tokens).logits
        merged = load_hf(step_dir)(tokens).logits
        ours = from_pretrained(step_dir)(tokens)

    assert (merged - base).abs().max() > 1e-3, "3 LoRA steps left the logits unchanged"
    torch.testing.assert_close(adapted_logits, merged, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours, merged, atol=1e-4, rtol=0)


def _check_adapter_files(adapter_dir: Path, targets: list[str]) -> None:
    """PEFT's config names the bundled targets; the weights hold an A and B per target."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    keys = load_file(adapter_dir / "adapter_model.safetensors").keys()
    modules = {k.removeprefix("base_model.model.").rsplit(".", 2)[0] for k in keys}
    if isinstance(config["target_modules"], str):
        # An exact regex, written when leaf names could also select unadapted modules (or,
        # for Phi-3, when unadapted q/k/v live inside a fused HF module).
        assert all(re.fullmatch(config["target_modules"], m) for m in modules), modules
    else:
        assert sorted(config["target_modules"]) == sorted(targets)
    adapted = {key.split(".")[-3] for key in keys}  # ...q_proj.lora_A.weight -> q_proj
    assert adapted == set(targets), keys
    layers = TINY["num_hidden_layers"]
    assert len(keys) == 2 * layers * len(targets), sorted(keys)
