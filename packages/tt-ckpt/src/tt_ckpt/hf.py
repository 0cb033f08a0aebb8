"""Read and write Hugging Face model directories in tt naming.

A directory holds ``config.json`` and weights as ``model.safetensors``, sharded
``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, or ``pytorch_model*.bin``
(+ ``pytorch_model.bin.index.json``). Tokenizer and generation files beside the weights are
copied on save so the output directory works with transformers as is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tt_ckpt.errors import (
    CheckpointError,
    CorruptFileError,
    MissingFilesError,
    MissingShardError,
)
from tt_ckpt.keymaps import check_shapes, get_keymap, hf_to_tt, tt_to_hf
from tt_ckpt.state import atomic_directory, torch_load_dict

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# Files that describe how to use the weights (tokenizer, generation defaults, chat template).
AUXILIARY_FILE_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "*.tiktoken",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"max_shard_size must be an int or a string like '2GB', got {size!r}.")
    if isinstance(size, int):
        number, unit = size, "B"
    else:
        found = _SIZE.match(size)
        if not found:
            raise ValueError(
                f"max_shard_size {size!r} is not a size; use bytes as an int or a string like "
                f"'500MB', '2GB' or '1GiB'."
            )
        number, unit = float(found.group(1)), (found.group(2) or "B").upper()
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}.")
    return result


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise CorruptFileError(path, f"invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class TextTower:
    """The text decoder inside a multimodal checkpoint, which tt loads as a causal LM alone.

    ``prefixes``: the text tower's weight-name prefixes -> a causal LM's (the Hub's files, then
    transformers 5's in-memory names); every other weight (vision tower, projector) is left
    out. ``defaults``: what transformers fills in where ``text_config`` leaves keys out (the
    Hub's Gemma 3 4B/12B/27B configs list only what differs from them).
    """

    text_model_type: str
    architecture: str
    prefixes: dict[str, str]
    defaults: dict[str, Any]


TEXT_TOWERS: dict[str, TextTower] = {
    # Gemma3ForConditionalGeneration; defaults are transformers' Gemma3TextConfig's.
    "gemma3": TextTower(
        text_model_type="gemma3_text",
        architecture="Gemma3ForCausalLM",
        prefixes={
            "language_model.model.": "model.",
            "language_model.lm_head.": "lm_head.",
            "model.language_model.": "model.",
        },
        defaults={
            "vocab_size": 262_208,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131_072,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "sliding_window_pattern": 6,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
        },
    ),
}


def read_hf_config(directory: str | Path) -> dict:
    """Return the ``config.json`` of a Hugging Face model directory as a dict.

    For a multimodal checkpoint in ``TEXT_TOWERS`` it is its text decoder's config (its
    ``text_config``, defaults filled in, as a causal LM's), which is what tt loads.
    """
    return text_tower_config(_config_file(directory))


def _config_file(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise MissingFilesError(directory, "config.json")
    return _read_json(path)


def text_tower_config(config: dict) -> dict:
    """``config`` itself, or for a multimodal one in ``TEXT_TOWERS`` its text decoder's config."""
    tower = TEXT_TOWERS.get(config.get("model_type"))
    if tower is None:
        return config
    text = {**tower.defaults, **(config.get("text_config") or {})}
    for key in ("tie_word_embeddings", "dtype", "torch_dtype"):  # the top level's hold
        if key in config:
            text[key] = config[key]
    text.update(model_type=tower.text_model_type, architectures=[tower.architecture])
    return text


def _text_tower_weights(
    shard: dict[str, torch.Tensor], model_type: str | None, source: str
) -> dict[str, torch.Tensor]:
    """A multimodal checkpoint's text-tower weights under a causal LM's names (others left)."""
    tower = TEXT_TOWERS.get(model_type)
    if tower is None:
        return shard
    kept: dict[str, torch.Tensor] = {}
    for key, tensor in shard.items():
        prefix = next((p for p in tower.prefixes if key.startswith(p)), None)
        if prefix is not None:
            kept[tower.prefixes[prefix] + key.removeprefix(prefix)] = tensor
    if len(kept) < len(shard):
        log.info(
            f"{source}: a {model_type} checkpoint; loading its text decoder "
            f"({len(shard) - len(kept)} vision/projector tensors left out)"
        )
    return kept


def _weight_files(directory: Path) -> tuple[list[Path], Path | None]:
    """Find the weight files and the index json (if any), preferring safetensors."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = _index_weight_map(index_path)
            names = sorted(set(weight_map.values()))
            missing = [name for name in names if not (directory / name).is_file()]
            if missing:
                raise MissingShardError(index_path, missing)
            return [directory / name for name in names], index_path
    # Only model*.safetensors: adapters or a consolidated copy may sit in the same directory.
    safetensors = sorted(directory.glob("model*.safetensors"))
    if safetensors:
        return safetensors, None
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        return bins, None
    raise MissingFilesError(
        directory,
        f"weights: {SAFETENSORS_INDEX}, model*.safetensors, {BIN_INDEX} or pytorch_model*.bin",
    )


def _index_weight_map(index_path: Path) -> dict[str, str]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError(index_path, "it has no 'weight_map' object mapping keys to files")
    for name in set(weight_map.values()):
        # Shards are files beside the index: a path elsewhere is not read.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CorruptFileError(
                index_path, f"its weight_map names {name!r}, not a file name in {index_path.parent}"
            )
    return weight_map


def _load_weight_file(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device=str(device))
        except (SafetensorError, OSError) as error:
            raise CorruptFileError(path, error) from error
    return torch_load_dict(path, device)


def _check_index_keys(index_path: Path, weight_map: Mapping[str, str], loaded: set[str]) -> None:
    missing = sorted(key for key in weight_map if key not in loaded)
    if missing:
        raise CheckpointError(
            f"{index_path} lists {len(missing)} tensor(s) that are in none of its shards, "
            f"e.g. {missing[0]!r} (said to be in {weight_map[missing[0]]}). The shards and the "
            f"index do not belong together; re-download the checkpoint."
        )


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict:
    if dtype is None:
        return state_dict
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _family(config: Mapping, family: str | None, directory: Path | None) -> str:
    if family is not None:
        get_keymap(family)
        return family
    if "model_type" not in config:
        where = f"{directory / 'config.json'}" if directory else "the config"
        raise CheckpointError(f"{where} has no 'model_type'; pass family= (e.g. 'llama').")
    source = f"model_type in {directory / 'config.json'}" if directory else "config model_type"
    get_keymap(config["model_type"], source=source)
    return config["model_type"]


def load_hf_checkpoint(
    directory: str | Path,
    *,
    family: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    files: Sequence[str] | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load a Hugging Face model directory; return ``(config, state_dict in tt naming)``.

    ``family`` defaults to ``config["model_type"]``; ``files`` restricts loading to these
    weight files (names relative to ``directory``). Shapes are checked against the config.
    """
    directory = Path(directory)
    raw_config = _config_file(directory)
    model_type = raw_config.get("model_type")  # e.g. gemma3: its text tower is what loads
    config = text_tower_config(raw_config)
    family = _family(config, family, directory)
    index_path = None
    if files is None:
        paths, index_path = _weight_files(directory)
    else:
        paths = [directory / name for name in files]
        missing = [str(p.name) for p in paths if not p.is_file()]
        if missing:
            raise MissingFilesError(directory, f"the weight files {missing} given in files=")
    state_dict: dict[str, torch.Tensor] = {}
    loaded_hf_keys: set[str] = set()
    for path in paths:
        shard = _load_weight_file(path, device)
        loaded_hf_keys.update(shard)
        shard = _text_tower_weights(shard, model_type, str(path))
        shard_tt = hf_to_tt(_cast(shard, dtype), family, config=config, source=str(path))
        check_shapes(shard_tt, config, family, source=str(path))
        state_dict.update(shard_tt)
    if index_path is not None:
        _check_index_keys(index_path, _index_weight_map(index_path), loaded_hf_keys)
    if config.get("tie_word_embeddings", False):
        # tt keeps one embedding matrix when tied; a redundant lm_head copy is dropped.
        state_dict.pop("output.weight", None)
    return config, state_dict


def _plan_shards(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Group keys in order into shards of at most ``max_bytes`` (a bigger tensor goes alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _prepare_for_save(state_dict_hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detach to contiguous CPU tensors, copying any that share storage (safetensors refuses)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state_dict_hf.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file(dict(tensors), path, metadata={"format": "pt"})
    # safetensors creates the file owner-only (0600); give it the mode of every other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_weights(tensors: Mapping[str, torch.Tensor], out: Path, max_bytes: int) -> None:
    shards = _plan_shards(tensors, max_bytes)
    if len(shards) == 1:
        _save_safetensors(tensors, out / "model.safetensors")
        return
    weight_map = {}
    for n, keys in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        _save_safetensors({k: tensors[k] for k in keys}, out / name)
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def copy_auxiliary_files(source_dir: str | Path, out: str | Path) -> list[str]:
    """Copy the tokenizer, generation-config and chat-template files of a model directory
    (``AUXILIARY_FILE_PATTERNS``) into ``out``; returns the names copied."""
    source_dir, out = Path(source_dir), Path(out)
    copied = []
    for pattern in AUXILIARY_FILE_PATTERNS:
        for path in sorted(source_dir.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, out / path.name)
                copied.append(path.name)
    return copied


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_hf_checkpoint(
    state_dict_tt: Mapping[str, torch.Tensor],
    config: Mapping,
    out_dir: str | Path,
    *,
    family: str | None = None,
    max_shard_size: int | str = "5GB",
    source_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a tt state dict as a Hugging Face directory that transformers loads.

    Writes ``config.json``, ``model.safetensors`` (or shards + ``model.safetensors.index.json``
    when larger than ``max_shard_size``) and copies tokenizer/generation/chat-template files from
    ``source_dir``. The directory is built beside ``out_dir`` and renamed into place, so an
    existing ``out_dir`` is replaced only once the new one is complete. Returns ``out_dir``.
    """
    max_bytes = parse_size(max_shard_size)
    family = _family(config, family, None)
    config = dict(config)
    check_shapes(state_dict_tt, config, family, source="the state dict being saved")
    state_dict_tt = dict(state_dict_tt)
    if config.get("tie_word_embeddings", False):
        # Tied models store only the embedding; transformers re-ties lm_head on load.
        state_dict_tt.pop("output.weight", None)
    tensors = _prepare_for_save(_cast(tt_to_hf(state_dict_tt, family), dtype))
    if dtype is not None:
        config["dtype"] = _dtype_name(dtype)
        if "torch_dtype" in config:
            config["torch_dtype"] = _dtype_name(dtype)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        if source_dir is not None:
            copy_auxiliary_files(source_dir, tmp)
        _write_weights(tensors, tmp, max_bytes)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        (tmp / "config.json").write_text(text, encoding="utf-8")
    return out_dir
