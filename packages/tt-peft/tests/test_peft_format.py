"""save_adapter / load_adapter against peft itself on a tiny transformers Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from tt_peft import (
    adapter_layers,
    adapter_state_dict,
    apply_lora,
    load_adapter,
    mark_only_adapters_trainable,
    save_adapter,
)

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("use_dora", [False, True])
def test_trained_adapter_loads_in_peft_with_equal_logits(
    load_llama, tiny_llama_dir, tokens, train_steps, tmp_path, use_dora
) -> None:
    torch.manual_seed(0)
    model = apply_lora(load_llama(), ALL_LINEARS, rank=4, alpha=8, dropout=0.1, use_dora=use_dora)
    mark_only_adapters_trainable(model)
    train_steps(model, tokens)
    expected = logits(model, tokens)
    assert not torch.allclose(expected, logits(load_llama(), tokens))  # training changed it

    save_adapter(model, tmp_path, base_model_name_or_path=str(tiny_llama_dir))
    peft_model = PeftModel.from_pretrained(load_llama(), tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, tokens), expected, atol=1e-5, rtol=0)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_dora) == (4, 8, use_dora)
    assert config.target_modules == set(ALL_LINEARS)
    assert config.base_model_name_or_path == str(tiny_llama_dir)


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_saved_adapter_loads_with_equal_logits(load_llama, tokens, tmp_path, use_dora) -> None:
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=ALL_LINEARS,
        use_dora=use_dora,
        use_rslora=True,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(load_llama(), config).eval()
    expected = logits(peft_model, tokens)
    peft_model.save_pretrained(tmp_path)

    model = load_adapter(load_llama(), tmp_path)
    assert len(adapter_layers(model)) == 14
    torch.testing.assert_close(logits(model, tokens), expected, atol=1e-5, rtol=0)


def test_files_match_what_peft_writes(load_llama, tiny_llama_dir, tmp_path) -> None:
    model = apply_lora(
        load_llama(), ["q_proj", "v_proj"], rank=4, alpha=8, dropout=0.05, use_dora=True
    )
    save_adapter(model, tmp_path / "ours", base_model_name_or_path=str(tiny_llama_dir))
    peft_config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        use_dora=True,
        task_type="CAUSAL_LM",
    )
    get_peft_model(load_llama(), peft_config).save_pretrained(tmp_path / "peft")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    theirs["target_modules"] = sorted(theirs["target_modules"])
    assert {key: theirs[key] for key in ours} == ours
    our_tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    their_tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in our_tensors.items()} == {
        k: v.shape for k, v in their_tensors.items()
    }


def test_partial_targets_are_saved_as_an_exact_regex(load_llama, tokens, tmp_path) -> None:
    model = apply_lora(
        load_llama(), ["re:model\\.layers\\.0\\.self_attn\\.q_proj"], rank=2, alpha=4
    )
    with torch.no_grad():
        nn.init.normal_(model.model.layers[0].self_attn.q_proj.lora_b.weight)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == r"(?:model\.layers\.0\.self_attn\.q_proj)"
    peft_model = PeftModel.from_pretrained(load_llama(), tmp_path).eval()
    adapted = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert adapted == ["base_model.model.model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(logits(peft_model, tokens), logits(model, tokens), atol=1e-5, rtol=0)


class TTStyle(nn.Module):
    """A model named the tt way (``layers.0.attn.q_proj``) to exercise ``key_map``."""

    def __init__(self) -> None:
        super().__init__()
        block = nn.Module()
        block.attn = nn.Module()
        block.attn.q_proj = nn.Linear(16, 16)
        self.layers = nn.ModuleList([block])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0].attn.q_proj(x)


def tt_to_hf(name: str) -> str:
    # Like tt_ckpt's map, it knows only the model's own modules, not an adapter's lora_a/lora_b.
    if name.endswith(("lora_a", "lora_b")):
        raise KeyError(f"no HF name for {name!r}")
    return "model." + name.replace(".attn.", ".self_attn.")


def test_key_map_translates_names_both_ways(tmp_path) -> None:
    torch.manual_seed(0)
    model = apply_lora(TTStyle(), ["q_proj"], rank=2, alpha=4, use_dora=True)
    with torch.no_grad():
        nn.init.normal_(model.layers[0].attn.q_proj.lora_b.weight)
    save_adapter(model, tmp_path, key_map=tt_to_hf)
    assert sorted(load_file(tmp_path / "adapter_model.safetensors")) == [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
    ]
    fresh = TTStyle()
    fresh.load_state_dict(model.state_dict(), strict=False)  # same base weights
    loaded = load_adapter(fresh, tmp_path, key_map=tt_to_hf)
    for name, tensor in adapter_state_dict(model).items():
        torch.testing.assert_close(adapter_state_dict(loaded)[name], tensor)


def test_key_map_that_merges_layers_is_rejected(load_llama, tmp_path) -> None:
    model = apply_lora(load_llama(), ["q_proj"], rank=2, alpha=4)
    with pytest.raises(
        ValueError, match=r"key_map sends both 'model.layers.0.self_attn.q_proj' and"
    ):
        save_adapter(model, tmp_path, key_map=lambda name: "same")


def rewrite_weights(adapter_dir: Path, edit) -> None:
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def saved_adapter(load_llama, tmp_path: Path) -> Path:
    save_adapter(apply_lora(load_llama(), ["q_proj", "v_proj"], rank=4, alpha=8), tmp_path)
    return tmp_path


def test_load_rejects_tensor_of_wrong_shape(load_llama, tmp_path) -> None:
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    rewrite_weights(
        saved_adapter(load_llama, tmp_path), lambda t: t.update({key: torch.zeros(32, 3)})
    )
    with pytest.raises(
        ValueError, match=rf"tensor '{key}' has shape \(32, 3\) but .*needs \(32, 4\)"
    ):
        load_adapter(load_llama(), tmp_path)


def test_load_rejects_missing_and_unknown_tensors(load_llama, tmp_path) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    rewrite_weights(saved_adapter(load_llama, tmp_path), lambda t: t.pop(key))
    with pytest.raises(
        ValueError, match=r"lacks tensors for 1 adapter.*layers.0.self_attn.q_proj.lora_a"
    ):
        load_adapter(load_llama(), tmp_path)
    stray = {"base_model.model.model.norm.lora_A.weight": torch.zeros(4, 64)}
    rewrite_weights(tmp_path, lambda t: t.update(stray))
    with pytest.raises(ValueError, match=r"is for module 'model.norm', which has no adapter"):
        load_adapter(load_llama(), tmp_path)


def test_load_into_adapted_model_checks_hyperparameters(load_llama, tmp_path) -> None:
    saved_adapter(load_llama, tmp_path)
    wrong = apply_lora(load_llama(), ["q_proj", "v_proj"], rank=2, alpha=8)
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.self_attn.q_proj' \(rank 2.*r=4"):
        load_adapter(wrong, tmp_path)


def test_load_rejects_unsupported_config(load_llama, tmp_path) -> None:
    saved_adapter(load_llama, tmp_path)
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    with pytest.raises(ValueError, match=r"modules_to_save=\['lm_head'\] is not supported"):
        load_adapter(load_llama(), tmp_path)
    path.write_text(json.dumps(config | {"peft_type": "IA3"}))
    with pytest.raises(ValueError, match=r"peft_type is 'IA3'; only 'LORA'"):
        load_adapter(load_llama(), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no adapter_config.json in"):
        load_adapter(load_llama(), tmp_path / "nowhere")


def test_save_requires_shared_hyperparameters(load_llama, tmp_path) -> None:
    model = apply_lora(load_llama(), ["q_proj"], rank=2, alpha=4)
    model.model.layers[1].self_attn.q_proj.scaling = 1.0
    model.model.layers[1].self_attn.q_proj.alpha = 2
    with pytest.raises(
        ValueError, match=r"layer 'model.layers.1.self_attn.q_proj' has .*'lora_alpha': 2"
    ):
        save_adapter(model, tmp_path)
