"""Every way a checkpoint directory can be broken gives a CheckpointError that says how."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tt_ckpt import (
    CheckpointError,
    CorruptFileError,
    MissingFilesError,
    MissingShardError,
    ShapeMismatchError,
    UnknownFamilyError,
    UnknownKeyError,
    load_hf_checkpoint,
    read_hf_config,
)


@pytest.fixture
def copy_dir(llama_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(llama_dir, target)
    return target


@pytest.fixture
def sharded_dir(llama, tmp_path):
    llama.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    return tmp_path / "sharded"


def test_truncated_safetensors(copy_dir):
    path = copy_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CorruptFileError) as info:
        load_hf_checkpoint(copy_dir)
    assert str(info.value).startswith(f"cannot read {path}:")
    assert "truncated or corrupt" in str(info.value)


def test_corrupt_safetensors_header(copy_dir):
    path = copy_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at!"  # the JSON header starts after an 8-byte length
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=rf"cannot read {path}"):
        load_hf_checkpoint(copy_dir)


def test_corrupt_pytorch_bin(llama, tmp_path):
    llama.config.save_pretrained(tmp_path)
    torch.save(llama.state_dict(), tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"pytorch_model.bin.*truncated or corrupt"):
        load_hf_checkpoint(tmp_path)


def test_deleted_shard(sharded_dir):
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(MissingShardError) as info:
        load_hf_checkpoint(sharded_dir)
    message = str(info.value)
    assert f"['{shard.name}'] referenced by model.safetensors.index.json" in message
    assert "The directory contains: config.json, generation_config.json," in message


def test_index_lists_a_tensor_no_shard_holds(sharded_dir):
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"in none of its shards, e.g. '{dropped}'"):
        load_hf_checkpoint(sharded_dir)


def test_wrong_shape_vs_config(copy_dir):
    config = json.loads((copy_dir / "config.json").read_text())
    config["intermediate_size"] = 96
    (copy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeMismatchError) as info:
        load_hf_checkpoint(copy_dir)
    message = str(info.value)
    # safetensors stores keys sorted, so down_proj is the first MLP tensor checked.
    assert message.startswith("tensor 'layers.0.mlp.down_proj.weight'")
    assert f"in {copy_dir / 'model.safetensors'}" in message
    assert (
        "has shape [64, 128], but the config (hidden_size x intermediate_size) gives [64, 96]"
        in (message)
    )


def test_unknown_key_in_file(copy_dir):
    path = copy_dir / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(UnknownKeyError) as info:
        load_hf_checkpoint(copy_dir)
    message = str(info.value)
    assert "'model.layers.0.self_attn.q_norm.weight'" in message
    assert f"from {path}" in message and "family 'llama'" in message


def test_unknown_model_type(copy_dir):
    config = json.loads((copy_dir / "config.json").read_text())
    config["model_type"] = "mamba"
    (copy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownFamilyError, match=r"'mamba' \(from model_type in .*config.json\)"):
        load_hf_checkpoint(copy_dir)


def test_missing_config_lists_directory(copy_dir):
    (copy_dir / "config.json").unlink()
    with pytest.raises(MissingFilesError) as info:
        read_hf_config(copy_dir)
    assert f"{copy_dir}: expected config.json" in str(info.value)
    assert "contains: chat_template.jinja, generation_config.json, model.safetensors" in str(
        info.value
    )


def test_no_weights(copy_dir):
    (copy_dir / "model.safetensors").unlink()
    with pytest.raises(MissingFilesError, match=r"expected weights: model.safetensors.index.json"):
        load_hf_checkpoint(copy_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(MissingFilesError, match=r"nothing \(the directory does not exist\)"):
        load_hf_checkpoint(tmp_path / "nope")


def test_invalid_config_json(copy_dir):
    (copy_dir / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"config.json: invalid JSON"):
        read_hf_config(copy_dir)


def test_files_argument_names_missing_files(copy_dir):
    with pytest.raises(MissingFilesError, match=r"\['extra.safetensors'\] given in files="):
        load_hf_checkpoint(copy_dir, files=["extra.safetensors"])
