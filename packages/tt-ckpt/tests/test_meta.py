from __future__ import annotations

import json

import pytest
import torch
from ckpt_testutils import assert_same_tensors, hf_as_tt
from transformers import LlamaConfig, LlamaForCausalLM
from tt_ckpt import (
    CheckpointError,
    MissingFilesError,
    ShapeMismatchError,
    UnknownKeyError,
    load_meta_checkpoint,
    meta_params_to_hf_config,
    save_meta_checkpoint,
    tt_to_hf,
)

PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 256,
    "multiple_of": 32,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
META_NAMES = {
    "attn_norm": "attention_norm",
    "mlp_norm": "ffn_norm",
    "attn.q_proj": "attention.wq",
    "attn.k_proj": "attention.wk",
    "attn.v_proj": "attention.wv",
    "attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
}


def to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta row 2j (2j+1) of each head is rotate-half row j (j + head_dim/2)."""
    head_dim = weight.shape[0] // n_heads
    rows = []
    for head in range(n_heads):
        for j in range(head_dim // 2):
            rows += [head * head_dim + j, head * head_dim + j + head_dim // 2]
    return weight[torch.tensor(rows)]


def meta_state_dict(tt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in tt.items():
        if ".q_proj." in key:
            tensor = to_interleaved(tensor, PARAMS["n_heads"])
        if ".k_proj." in key:
            tensor = to_interleaved(tensor, PARAMS["n_kv_heads"])
        for old, new in META_NAMES.items():
            key = key.replace(old, new)
        out[key] = tensor.clone()
    return out


def write_meta(directory, shards: list[dict], params=PARAMS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for n, shard in enumerate(shards):
        torch.save(shard, directory / f"consolidated.{n:02d}.pth")
    (directory / "params.json").write_text(json.dumps(params))


def split_for_model_parallel(meta: dict, embedding_dim: int) -> list[dict]:
    """Two model-parallel shards the way fairscale layers hold them."""
    shards: list[dict] = [{}, {}]
    for key, tensor in meta.items():
        name = key.split(".")[-2]
        dim = {"wo": 1, "w2": 1, "tok_embeddings": embedding_dim}.get(name, 0)
        if "norm" in key:
            parts = [tensor, tensor]  # replicated
        else:
            parts = torch.chunk(tensor, 2, dim=dim)
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()
    return shards


@pytest.fixture(scope="module")
def expected_tt(llama):
    return hf_as_tt(llama)


def test_load_meta_equals_hf_derived(expected_tt, tmp_path):
    write_meta(tmp_path, [meta_state_dict(expected_tt)])
    params, tt = load_meta_checkpoint(tmp_path)
    assert params == PARAMS
    assert_same_tensors(tt, expected_tt)


@pytest.mark.parametrize("embedding_dim", [0, 1], ids=["vocab-parallel", "dim-parallel"])
def test_two_model_parallel_shards(expected_tt, tmp_path, embedding_dim):
    write_meta(tmp_path, split_for_model_parallel(meta_state_dict(expected_tt), embedding_dim))
    _, tt = load_meta_checkpoint(tmp_path)
    assert_same_tensors(tt, expected_tt)


def test_save_meta_then_load(expected_tt, tmp_path):
    save_meta_checkpoint(expected_tt, PARAMS, tmp_path / "meta")
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == [
        "consolidated.00.pth",
        "params.json",
    ]
    raw = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    assert_same_tensors(raw, meta_state_dict(expected_tt))
    params, tt = load_meta_checkpoint(tmp_path / "meta")
    assert params == PARAMS
    assert_same_tensors(tt, expected_tt)


def test_llama2_rope_freqs_buffer_is_ignored(expected_tt, tmp_path):
    meta = meta_state_dict(expected_tt)
    meta["rope.freqs"] = torch.ones(8)
    write_meta(tmp_path, [meta])
    _, tt = load_meta_checkpoint(tmp_path)
    assert "rope.freqs" not in tt


def test_params_to_hf_config_gives_the_same_model(llama, expected_tt, tmp_path):
    write_meta(tmp_path, [meta_state_dict(expected_tt)])
    params, tt = load_meta_checkpoint(tmp_path)
    config = meta_params_to_hf_config(params, tt, max_position_embeddings=128)
    assert config["intermediate_size"] == 128 and config["tie_word_embeddings"] is False
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    model.load_state_dict(tt_to_hf(tt))
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, llama(tokens).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [(4096, 256, None, 11008), (4096, 1024, 1.3, 14336)],  # Llama 2 7B, Llama 3 8B
)
def test_params_to_hf_config_mlp_width_rule(dim, multiple_of, multiplier, expected):
    params = {"dim": dim, "n_layers": 32, "n_heads": 32, "vocab_size": 32000}
    params |= {"multiple_of": multiple_of, "ffn_dim_multiplier": multiplier}
    config = meta_params_to_hf_config(params)
    assert config["intermediate_size"] == expected and config["num_key_value_heads"] == 32


def test_params_to_hf_config_scaled_rope_and_unknown_vocab():
    params = PARAMS | {"use_scaled_rope": True, "vocab_size": -1}
    with pytest.raises(CheckpointError, match=r"params.json has vocab_size -1; pass the state"):
        meta_params_to_hf_config(params)
    config = meta_params_to_hf_config(
        params, {"tok_embeddings.weight": torch.ones(300, 64)}, rope_scaling_factor=32.0
    )
    assert config["vocab_size"] == 300 and config["rope_scaling"]["factor"] == 32.0


def test_missing_files(expected_tt, tmp_path):
    with pytest.raises(MissingFilesError, match=r"expected params.json"):
        load_meta_checkpoint(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    with pytest.raises(MissingFilesError, match=r"consolidated.00.pth.*contains: params.json"):
        load_meta_checkpoint(tmp_path)


def test_params_disagree_with_weights(expected_tt, tmp_path):
    write_meta(tmp_path, [meta_state_dict(expected_tt)], params=PARAMS | {"n_kv_heads": 4})
    with pytest.raises(ShapeMismatchError, match=r"'layers.0.attn.k_proj.weight' in consolidat"):
        load_meta_checkpoint(tmp_path)


def test_params_without_a_required_key(expected_tt, tmp_path):
    params = {k: v for k, v in PARAMS.items() if k != "n_heads"}
    write_meta(tmp_path, [meta_state_dict(expected_tt)], params=params)
    with pytest.raises(CheckpointError, match=r"params.json has no 'n_heads'"):
        load_meta_checkpoint(tmp_path)


def test_shards_with_different_keys(expected_tt, tmp_path):
    shards = split_for_model_parallel(meta_state_dict(expected_tt), 0)
    del shards[1]["norm.weight"]
    write_meta(tmp_path, shards)
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth holds different keys.*'norm"):
        load_meta_checkpoint(tmp_path)


def test_unknown_meta_key(expected_tt, tmp_path):
    meta = meta_state_dict(expected_tt) | {"layers.0.attention.wqkv.weight": torch.ones(1)}
    write_meta(tmp_path, [meta])
    with pytest.raises(UnknownKeyError, match=r"unknown Meta key 'layers.0.attention.wqkv"):
        load_meta_checkpoint(tmp_path)
