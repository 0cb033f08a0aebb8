"""Llama 3.2 Vision (``MllamaForConditionalGeneration``) checkpoints: the Hub's layout (what
transformers writes) and transformers 5's in-memory names load into tt naming, and tt's save
loads back in transformers with every tensor and the logits unchanged."""

from __future__ import annotations

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration
from tt_ckpt import load_hf_checkpoint, save_hf_checkpoint, tt_module_to_hf
from tt_ckpt.keymaps import hf_to_tt

CONFIG = MllamaConfig(
    vision_config=dict(
        hidden_size=16, num_hidden_layers=3, num_global_layers=1, attention_heads=2,
        intermediate_size=32, vision_output_dim=48, image_size=28, patch_size=14,
        max_num_tiles=2, intermediate_layers_indices=[0, 2],
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    ),
    text_config=dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, cross_attention_layers=[1],
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    image_token_index=64,
)  # fmt: skip


def _model() -> MllamaForConditionalGeneration:
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(CONFIG).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def _logits(model: MllamaForConditionalGeneration) -> torch.Tensor:
    torch.manual_seed(1)
    tokens = torch.tensor([[1, 64, 5, 9, 20, 17]])
    mask = torch.zeros(1, 6, 1, 2, dtype=torch.long)
    mask[0, 1:] = 1
    with torch.no_grad():
        return model(
            input_ids=tokens,
            pixel_values=torch.randn(1, 1, 2, 3, 28, 28),
            aspect_ratio_ids=torch.tensor([[3]]),
            aspect_ratio_mask=torch.ones(1, 1, 2, dtype=torch.long),
            cross_attention_mask=mask,
        ).logits


def test_hub_layout_loads_and_saves_back_unchanged(tmp_path):
    hf = _model()
    hf.save_pretrained(tmp_path / "hf")
    config, state = load_hf_checkpoint(tmp_path / "hf")
    assert config["model_type"] == "mllama"
    assert "decoder.layers.1.cross_attn.q_norm.weight" in state
    assert "decoder.layers.1.attn_gate" in state and "encoder.global_layers.0.mlp_gate" in state
    assert torch.equal(state["encoder.projection.weight"], hf.model.multi_modal_projector.weight)
    assert state["decoder.tok_embeddings.weight"].shape == (64 + 8, 16)  # + the image token's rows
    save_hf_checkpoint(state, config, tmp_path / "out")
    reloaded = MllamaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    original = hf.state_dict()
    for key, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, original[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(_logits(reloaded), _logits(hf), rtol=0, atol=0)


def test_in_memory_names_load_too():
    hf = _model()
    state = hf_to_tt(hf.state_dict(), "mllama")
    assert len(state) == len(hf.state_dict())
    assert torch.equal(state["decoder.output.weight"], hf.lm_head.weight)


def test_adapter_targets_name_the_modules_of_transformers_model_in_memory():
    """PEFT adapters name modules as peft finds them in the loaded model."""
    modules = dict(_model().named_modules())
    for tt, hf in [
        ("decoder.layers.1.cross_attn.q_proj", "model.language_model.layers.1.cross_attn.q_proj"),
        ("decoder.layers.2.mlp.up_proj", "model.language_model.layers.2.mlp.up_proj"),
        ("encoder.global_layers.0.attn.v_proj",
         "model.vision_model.global_transformer.layers.0.self_attn.v_proj"),
        ("encoder.layers.1.mlp.fc2", "model.vision_model.transformer.layers.1.mlp.fc2"),
    ]:  # fmt: skip
        assert tt_module_to_hf(tt, "mllama") == hf
        assert hf in modules
