from __future__ import annotations

import json
import shutil

import pytest
import torch
from ckpt_testutils import assert_same_tensors, expected_tt_keys, hf_as_tt, tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer
from tt_ckpt import load_hf_checkpoint, parse_size, read_hf_config, save_hf_checkpoint

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_read_hf_config(llama_dir):
    config = read_hf_config(llama_dir)
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2


def test_load_single_file(llama, llama_dir):
    config, tt = load_hf_checkpoint(llama_dir)
    assert config["hidden_size"] == 64
    assert set(tt) == expected_tt_keys()
    assert_same_tensors(tt, hf_as_tt(llama))


def test_load_sharded(llama, tmp_path):
    llama.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _, tt = load_hf_checkpoint(tmp_path)
    assert_same_tensors(tt, hf_as_tt(llama))


def test_load_pytorch_bin(llama, tmp_path):
    # transformers 5 only writes safetensors; older checkpoints hold torch.save'd state dicts.
    llama.config.save_pretrained(tmp_path)
    torch.save(llama.state_dict(), tmp_path / "pytorch_model.bin")
    _, tt = load_hf_checkpoint(tmp_path)
    assert_same_tensors(tt, hf_as_tt(llama))


def test_load_sharded_pytorch_bin_with_index(llama, tmp_path):
    llama.config.save_pretrained(tmp_path)
    state = llama.state_dict()
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    halves = [dict(list(state.items())[:5]), dict(list(state.items())[5:])]
    weight_map = {}
    for name, half in zip(names, halves):
        torch.save(half, tmp_path / name)
        weight_map.update(dict.fromkeys(half, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _, tt = load_hf_checkpoint(tmp_path)
    assert_same_tensors(tt, hf_as_tt(llama))


def test_load_tied_has_no_output_weight(tmp_path):
    model = tiny_llama(tie=True)
    model.save_pretrained(tmp_path)
    _, tt = load_hf_checkpoint(tmp_path)
    assert set(tt) == expected_tt_keys(tied=True)
    assert_same_tensors(tt, hf_as_tt(model))


def test_load_dtype_and_files_subset(llama, tmp_path):
    llama.save_pretrained(tmp_path, max_shard_size="100KB")
    first = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))[0]
    _, tt = load_hf_checkpoint(tmp_path, dtype=torch.bfloat16, files=[first])
    assert 0 < len(tt) < len(expected_tt_keys())
    for key, tensor in tt.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, hf_as_tt(llama)[key].to(torch.bfloat16))


def test_save_loads_in_transformers_with_same_logits(llama, llama_dir, tmp_path):
    config, tt = load_hf_checkpoint(llama_dir)
    out = save_hf_checkpoint(tt, config, tmp_path / "out", source_dir=llama_dir)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert_same_tensors(reloaded.state_dict(), llama.state_dict())
    torch.testing.assert_close(logits(reloaded), logits(llama), rtol=0, atol=0)


def test_save_copies_tokenizer_generation_and_chat_template(llama_dir, tmp_path):
    config, tt = load_hf_checkpoint(llama_dir)
    out = save_hf_checkpoint(tt, config, tmp_path / "out", source_dir=llama_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                 "chat_template.jinja"):  # fmt: skip
        assert (out / name).read_bytes() == (llama_dir / name).read_bytes(), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        tokenizer("the lazy dog")["input_ids"]
        == AutoTokenizer.from_pretrained(llama_dir)("the lazy dog")["input_ids"]
    )


def test_save_sharded_writes_a_correct_index(llama, llama_dir, tmp_path):
    config, tt = load_hf_checkpoint(llama_dir)
    out = save_hf_checkpoint(tt, config, tmp_path / "out", max_shard_size="100KB")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(llama.state_dict())
    assert set(index["weight_map"].values()) == set(shards)
    nbytes = sum(t.numel() * t.element_size() for t in llama.state_dict().values())
    assert index["metadata"]["total_size"] == nbytes
    for shard in shards:
        assert (out / shard).stat().st_size < 100_000 + 4096  # data + header
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(reloaded), logits(llama), rtol=0, atol=0)


def test_save_tied_writes_no_lm_head(tmp_path):
    model = tiny_llama(tie=True, seed=1)
    model.save_pretrained(tmp_path / "in")
    config, tt = load_hf_checkpoint(tmp_path / "in")
    tt["output.weight"] = tt["tok_embeddings.weight"]  # a tied tt model may still expose it
    out = save_hf_checkpoint(tt, config, tmp_path / "out")
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def test_save_dtype_updates_config(llama_dir, tmp_path):
    config, tt = load_hf_checkpoint(llama_dir)
    out = save_hf_checkpoint(tt, config, tmp_path / "out", dtype=torch.bfloat16)
    saved_config, reloaded = load_hf_checkpoint(out)
    assert saved_config["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in reloaded.values())
    assert torch.equal(reloaded["norm.weight"], tt["norm.weight"].to(torch.bfloat16))


def test_save_replaces_existing_directory_completely(llama_dir, tmp_path):
    config, tt = load_hf_checkpoint(llama_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_hf_checkpoint(tt, config, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left


def test_save_in_place_over_the_source_directory(llama, llama_dir, tmp_path):
    shutil.copytree(llama_dir, tmp_path / "model")
    (tmp_path / "model" / "adapter_model.safetensors").write_bytes(b"not loaded: not model*")
    config, tt = load_hf_checkpoint(tmp_path / "model")
    tt["norm.weight"] = tt["norm.weight"] * 2
    save_hf_checkpoint(tt, config, tmp_path / "model", source_dir=tmp_path / "model")
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    assert not (tmp_path / "model" / "adapter_model.safetensors").exists()
    _, reloaded = load_hf_checkpoint(tmp_path / "model")
    assert torch.equal(reloaded["norm.weight"], llama.model.norm.weight * 2)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1234, 1234), ("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1GiB", 2**30), ("1.5kb", 1500)],
)
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["5 parsecs", "", 0, -3, "0MB"])
def test_parse_size_rejects(size):
    with pytest.raises(ValueError, match=rf"max_shard_size.*{size!r}"):
        parse_size(size)
