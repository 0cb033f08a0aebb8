"""Key maps of Mistral, Qwen2, Qwen3, Qwen3-MoE, Mixtral, Gemma, Gemma 2, Gemma 3 and Phi-3: a transformers checkpoint loads
into tt naming (picked from config.json's model_type) and saves back to one transformers loads
with the same logits."""

from __future__ import annotations

import pytest
import torch
from ckpt_testutils import FAMILY_CONFIGS, expected_family_tt_keys, tiny_family_model
from transformers import AutoModelForCausalLM
from tt_ckpt import CheckpointError, load_hf_checkpoint, save_hf_checkpoint, tt_module_to_hf

FAMILIES = list(FAMILY_CONFIGS)
TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 8, 90, 12, 7]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_load_then_save_round_trips_through_transformers(family, tmp_path):
    hf = tiny_family_model(family)
    hf.save_pretrained(tmp_path / "hf")
    config, state = load_hf_checkpoint(tmp_path / "hf")
    assert config["model_type"] == family
    assert set(state) == expected_family_tt_keys(family)
    save_hf_checkpoint(state, config, tmp_path / "out")
    attn = "eager" if family == "gemma2" else "sdpa"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation=attn)
    original = hf.state_dict()
    for key, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, original[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(_logits(reloaded.eval()), _logits(hf), rtol=0, atol=0)


def test_gemma2_norms_map_to_their_roles(tmp_path):
    hf = tiny_family_model("gemma2")
    hf.save_pretrained(tmp_path)
    _, state = load_hf_checkpoint(tmp_path)
    layer = hf.model.layers[1]
    for tt_name, hf_norm in [
        ("attn_norm", layer.input_layernorm),
        ("attn_post_norm", layer.post_attention_layernorm),
        ("mlp_norm", layer.pre_feedforward_layernorm),
        ("mlp_post_norm", layer.post_feedforward_layernorm),
    ]:
        assert torch.equal(state[f"layers.1.{tt_name}.weight"], hf_norm.weight)


def test_phi3_fused_projections_split_on_load(tmp_path):
    hf = tiny_family_model("phi3")
    hf.save_pretrained(tmp_path)
    _, state = load_hf_checkpoint(tmp_path)
    layer = hf.model.layers[0]
    qkv, gate_up = layer.self_attn.qkv_proj.weight, layer.mlp.gate_up_proj.weight
    # 4 query heads and 2 key/value heads of head_dim 16.
    assert torch.equal(state["layers.0.attn.q_proj.weight"], qkv[:64])
    assert torch.equal(state["layers.0.attn.k_proj.weight"], qkv[64:96])
    assert torch.equal(state["layers.0.attn.v_proj.weight"], qkv[96:])
    assert torch.equal(state["layers.0.mlp.gate_proj.weight"], gate_up[:128])
    assert torch.equal(state["layers.0.mlp.up_proj.weight"], gate_up[128:])


@pytest.mark.parametrize(
    ("family", "tt", "hf"),
    [
        ("qwen2", "layers.3.attn.v_proj", "model.layers.3.self_attn.v_proj"),
        ("qwen3", "layers.0.attn.q_norm", "model.layers.0.self_attn.q_norm"),
        ("mistral", "layers.1.mlp.gate_proj", "model.layers.1.mlp.gate_proj"),
        ("gemma2", "layers.2.mlp_norm", "model.layers.2.pre_feedforward_layernorm"),
        ("gemma3_text", "layers.1.attn.k_norm", "model.layers.1.self_attn.k_norm"),
        ("qwen3_moe", "layers.1.mlp.experts.7.up_proj", "model.layers.1.mlp.experts.7.up_proj"),
        ("qwen3_moe", "layers.0.mlp.router", "model.layers.0.mlp.gate"),
        (
            "mixtral",
            "layers.2.mlp.experts.5.up_proj",
            "model.layers.2.block_sparse_moe.experts.5.w3",
        ),
        ("phi3", "layers.0.attn.o_proj", "model.layers.0.self_attn.o_proj"),
        ("phi3", "layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj"),
    ],
)
def test_adapter_module_names(family, tt, hf):
    assert tt_module_to_hf(tt, family) == hf


@pytest.mark.parametrize("module", ["attn.k_proj", "mlp.up_proj"])
def test_phi3_fused_modules_cannot_take_per_projection_adapters(module):
    with pytest.raises(CheckpointError, match=r"fused HF modules cannot take per-projection"):
        tt_module_to_hf(f"layers.0.{module}", "phi3")


def test_a_gemma3_multimodal_checkpoint_loads_its_text_decoder(tmp_path):
    """Gemma3ForConditionalGeneration: the text tower's weights under a causal LM's names,
    the vision tower and projector left out, the config its text_config's."""
    import transformers

    text_model = tiny_family_model("gemma3_text")
    config = transformers.Gemma3Config(
        text_config=text_model.config.to_dict(),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )  # fmt: skip
    multimodal = transformers.Gemma3ForConditionalGeneration(config)
    multimodal.model.language_model.load_state_dict(text_model.model.state_dict())
    multimodal.save_pretrained(tmp_path)
    loaded_config, state_dict = load_hf_checkpoint(tmp_path)
    assert loaded_config["model_type"] == "gemma3_text"
    assert loaded_config["architectures"] == ["Gemma3ForCausalLM"]
    assert set(state_dict) == expected_family_tt_keys("gemma3_text")
    torch.testing.assert_close(
        state_dict["layers.1.attn.k_norm.weight"],
        text_model.model.layers[1].self_attn.k_norm.weight,
    )
