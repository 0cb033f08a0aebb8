"""``freeze`` on a vision model: the named parts do not train and take no adapters, while the
fusion layers (cross-attention layers, the encoder's projection) always train."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from tt_models import llama3_2_vision, transformer_decoder
from tt_peft import adapter_layers
from tt_recipes.adapters import add_adapters
from tt_recipes.training import freeze_parts

VISION = dict(dim=16, n_layers=2, n_global_layers=1, n_heads=2, hidden_dim=32, tile_size=14,
              patch_size=7, max_num_tiles=2, intermediate_layers=[0])  # fmt: skip


def _model():
    torch.manual_seed(0)
    return llama3_2_vision(
        vocab_size=64, dim=16, n_layers=3, n_heads=2, n_kv_heads=1, hidden_dim=32,
        cross_attention_layers=[1], image_token_id=64, vision=VISION,
    )  # fmt: skip


def _cfg(freeze: list[str], targets: list[str] | None = None):
    peft = None if targets is None else {
        "rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": targets, "use_dora": False,
        "use_rslora": False, "quantize_base": False,
    }  # fmt: skip
    return OmegaConf.create({"freeze": freeze, "peft": peft})


def _trained(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("freeze", [["encoder"], ["decoder"], ["encoder", "decoder"]])
def test_full_training_freezes_the_named_parts_but_not_the_fusion_layers(freeze):
    model = freeze_parts(_model(), _cfg(freeze))
    trained = _trained(model)
    fusion = {n for n in trained if n.startswith(("encoder.projection.", "decoder.layers.1."))}
    assert fusion == {n for n, _ in model.named_parameters()
                      if n.startswith(("encoder.projection.", "decoder.layers.1."))}  # fmt: skip
    for part in ("encoder", "decoder"):
        rest = {n for n in trained if n.startswith(part + ".")} - fusion
        assert bool(rest) == (part not in freeze), (part, sorted(rest)[:4])


def test_adapters_go_only_where_nothing_is_frozen():
    cfg = _cfg(["decoder"], ["q_proj", "fc1", "gate_proj"])
    model = freeze_parts(_model(), cfg, prepare=add_adapters)
    adapted = set(adapter_layers(model))
    assert "decoder.layers.0.attn.q_proj" not in adapted  # a frozen self-attention layer
    assert {"decoder.layers.1.cross_attn.q_proj", "decoder.layers.1.mlp.gate_proj",
            "encoder.layers.0.attn.q_proj", "encoder.layers.0.mlp.fc1"} <= adapted  # fmt: skip
    assert _trained(model) == {n for n, _ in model.named_parameters() if "lora_" in n}


def test_freezing_a_text_model_is_an_error():
    model = transformer_decoder(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    with pytest.raises(ValueError, match=r"freeze: \['encoder'\], but the model \(llama\) is not"):
        freeze_parts(model, _cfg(["encoder"]))
