from __future__ import annotations

import pytest
import torch
from ckpt_testutils import assert_same_tensors, expected_tt_keys, hf_as_tt
from tt_ckpt import (
    CheckpointError,
    FusedTensor,
    KeyMap,
    ShapeMismatchError,
    UnknownFamilyError,
    UnknownKeyError,
    check_shapes,
    hf_to_tt,
    tt_module_to_hf,
    tt_to_hf,
)


def test_llama_hf_to_tt_matches_contract_and_round_trips(llama):
    hf = llama.state_dict()
    tt = hf_to_tt(hf, "llama")
    assert set(tt) == expected_tt_keys()
    assert_same_tensors(tt, hf_as_tt(llama))
    assert_same_tensors(tt_to_hf(tt, "llama"), dict(hf))


def test_attention_biases_and_old_rotary_buffers():
    hf = {
        "model.layers.3.self_attn.q_proj.bias": torch.ones(2),
        "model.layers.3.self_attn.rotary_emb.inv_freq": torch.ones(2),
    }
    assert list(hf_to_tt(hf)) == ["layers.3.attn.q_proj.bias"]


def test_unknown_hf_key_names_key_file_and_family():
    with pytest.raises(UnknownKeyError) as info:
        hf_to_tt({"model.layers.0.block_sparse_moe.gate.weight": torch.ones(1)}, source="a.bin")
    message = str(info.value)
    assert "'model.layers.0.block_sparse_moe.gate.weight'" in message
    assert "a.bin" in message and "'llama'" in message and "Hugging Face" in message


def test_unknown_tt_key():
    with pytest.raises(
        UnknownKeyError, match=r"unknown tt key 'layers.0.attn.qkv.weight'.*'llama'"
    ):
        tt_to_hf({"layers.0.attn.qkv.weight": torch.ones(1)})


def test_unknown_family_lists_known_ones():
    known = r"\['gemma', 'gemma2', 'gemma3_text', 'llama', 'mistral', 'mixtral', 'mllama', 'phi3', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe'\]"
    with pytest.raises(UnknownFamilyError, match=rf"'gpt9'.*known families: {known}"):
        hf_to_tt({}, "gpt9")


@pytest.mark.parametrize(
    ("tt", "hf"),
    [
        ("layers.0.attn.q_proj", "model.layers.0.self_attn.q_proj"),
        ("layers.11.mlp.down_proj", "model.layers.11.mlp.down_proj"),
        ("output", "lm_head"),
        ("tok_embeddings", "model.embed_tokens"),
    ],
)
def test_tt_module_to_hf(tt, hf):
    assert tt_module_to_hf(tt, "llama") == hf


def test_tt_module_to_hf_unknown():
    with pytest.raises(UnknownKeyError, match=r"unknown tt module key 'layers.0.attn'"):
        tt_module_to_hf("layers.0.attn", "llama")


# A made-up family shaped like Phi-3: fused qkv (unequal parts) and gate_up (equal halves).
FUSED = KeyMap(
    family="toy",
    rules=(("m.{i}.o.weight", "layers.{i}.attn.o_proj.weight"),),
    fused=(
        FusedTensor(
            hf="m.{i}.qkv.weight",
            tt=(
                "layers.{i}.attn.q_proj.weight",
                "layers.{i}.attn.k_proj.weight",
                "layers.{i}.attn.v_proj.weight",
            ),  # fmt: skip
            sizes=(
                "num_attention_heads*head_dim",
                "num_key_value_heads*head_dim",
                "num_key_value_heads*head_dim",
            ),  # fmt: skip
        ),
        FusedTensor(
            hf="m.{i}.gate_up.weight",
            tt=("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
        ),
    ),
)
TOY_CONFIG = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 1}


def test_fused_tensors_split_on_load_and_fuse_on_save():
    torch.manual_seed(0)
    qkv, gate_up, o = torch.randn(8 + 2 + 2, 8), torch.randn(6, 8), torch.randn(8, 8)
    hf = {"m.1.qkv.weight": qkv, "m.1.gate_up.weight": gate_up, "m.1.o.weight": o}
    tt = hf_to_tt(hf, FUSED, config=TOY_CONFIG)
    # head_dim = 8 / 4 = 2: q has 4 heads (8 rows), k and v one head (2 rows) each.
    assert torch.equal(tt["layers.1.attn.q_proj.weight"], qkv[:8])
    assert torch.equal(tt["layers.1.attn.k_proj.weight"], qkv[8:10])
    assert torch.equal(tt["layers.1.attn.v_proj.weight"], qkv[10:])
    assert torch.equal(tt["layers.1.mlp.gate_proj.weight"], gate_up[:3])
    assert torch.equal(tt["layers.1.mlp.up_proj.weight"], gate_up[3:])
    assert_same_tensors(tt_to_hf(tt, FUSED), hf)


def test_fused_split_errors():
    with pytest.raises(CheckpointError, match=r"'m.0.qkv.weight' needs the model config"):
        hf_to_tt({"m.0.qkv.weight": torch.ones(12, 8)}, FUSED)
    with pytest.raises(ShapeMismatchError, match=r"'m.0.qkv.weight' in f.safetensors has shape"):
        hf_to_tt({"m.0.qkv.weight": torch.ones(13, 8)}, FUSED, config=TOY_CONFIG,
                 source="f.safetensors")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"size 5 along dim 0.*2 equal parts"):
        hf_to_tt({"m.0.gate_up.weight": torch.ones(5, 8)}, FUSED)


def test_fuse_with_a_missing_part_names_it():
    tt = {"layers.0.mlp.gate_proj.weight": torch.ones(3, 8)}
    with pytest.raises(CheckpointError, match=r"\['layers.0.mlp.up_proj.weight'\] are not in"):
        tt_to_hf(tt, FUSED)


def test_module_of_a_fused_tensor_has_no_hf_name():
    with pytest.raises(CheckpointError, match=r"part of the fused HF tensor 'm.2.qkv.weight'"):
        tt_module_to_hf("layers.2.attn.k_proj", FUSED)


def test_check_shapes_derives_head_dim_and_names_config_keys():
    config = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1}
    check_shapes({"layers.0.attn.k_proj.weight": torch.ones(4, 8)}, config)
    with pytest.raises(ShapeMismatchError) as info:
        check_shapes({"layers.0.attn.k_proj.weight": torch.ones(8, 8)}, config, source="x")
    assert str(info.value).startswith("tensor 'layers.0.attn.k_proj.weight' in x has shape [8, 8]")
    assert "num_key_value_heads*head_dim x hidden_size) gives [4, 8]" in str(info.value)


def test_check_shapes_names_a_missing_config_key():
    with pytest.raises(CheckpointError, match=r"config has no 'vocab_size'"):
        check_shapes({"tok_embeddings.weight": torch.ones(2, 2)}, {"hidden_size": 2})
