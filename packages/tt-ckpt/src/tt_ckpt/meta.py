"""Read and write Meta's original Llama format (``consolidated.*.pth`` + ``params.json``).

Meta stores q/k projections with RoPE applied to interleaved pairs (x0, x1), (x2, x3), ...;
tt (like HF) rotates halves, (x0, x_{d/2}), ... . Rows of each head are permuted on
conversion so the two layouts compute the same attention.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from tt_ckpt.errors import CheckpointError, CorruptFileError, MissingFilesError
from tt_ckpt.keymaps import KeyMap, check_shapes, hf_to_tt, tt_to_hf
from tt_ckpt.state import atomic_directory, torch_load_dict

META_LLAMA = KeyMap(
    family="llama",
    naming="Meta",
    rules=(
        ("tok_embeddings.weight", "tok_embeddings.weight"),
        ("norm.weight", "norm.weight"),
        ("output.weight", "output.weight"),
        ("layers.{i}.attention_norm.weight", "layers.{i}.attn_norm.weight"),
        ("layers.{i}.ffn_norm.weight", "layers.{i}.mlp_norm.weight"),
        ("layers.{i}.attention.wq.weight", "layers.{i}.attn.q_proj.weight"),
        ("layers.{i}.attention.wk.weight", "layers.{i}.attn.k_proj.weight"),
        ("layers.{i}.attention.wv.weight", "layers.{i}.attn.v_proj.weight"),
        ("layers.{i}.attention.wo.weight", "layers.{i}.attn.o_proj.weight"),
        ("layers.{i}.feed_forward.w1.weight", "layers.{i}.mlp.gate_proj.weight"),
        ("layers.{i}.feed_forward.w3.weight", "layers.{i}.mlp.up_proj.weight"),
        ("layers.{i}.feed_forward.w2.weight", "layers.{i}.mlp.down_proj.weight"),
    ),
    ignored_hf=("rope.freqs",),  # precomputed RoPE table in Llama 2 checkpoints
)

# Model-parallel shards split column-parallel weights along dim 0 and row-parallel along 1;
# norms are replicated. Keyed by the module name before ".weight".
_PARALLEL_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def _param(params: Mapping, name: str, source: str) -> int:
    if name == "n_kv_heads" and params.get(name) is None:
        return _param(params, "n_heads", source)
    if name not in params:
        raise CheckpointError(f"{source} has no {name!r}; params keys: {sorted(params)}.")
    return int(params[name])


def _heads(params: Mapping, source: str) -> dict[str, int]:
    """Heads of the tensors whose rows are permuted, per tt key suffix."""
    return {
        "attn.q_proj.weight": _param(params, "n_heads", source),
        "attn.k_proj.weight": _param(params, "n_kv_heads", source),
    }


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute q/k rows from Meta's interleaved RoPE layout to rotate-half.

    ``weight``: [n_heads * head_dim, in_features]; per head, rows (0, 1, 2, 3, ...) pair up as
    (0, 1), (2, 3); afterwards they pair up as (0, d/2), (1, d/2 + 1).
    """
    rows, cols = weight.shape
    return (
        weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
    )


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``interleaved_to_half``."""
    rows, cols = weight.shape
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)
    )


def _permute(state_dict: dict[str, torch.Tensor], params: Mapping, source: str, fn) -> dict:
    heads = _heads(params, source)
    out = {}
    for key, tensor in state_dict.items():
        suffix = key.split(".", 2)[-1]
        out[key] = fn(tensor, heads[suffix]) if suffix in heads else tensor
    return out


def _embedding_dim(tensor: torch.Tensor, dim: int) -> int:
    # Llama 2 splits the embedding by hidden dim (ParallelEmbedding), Llama 3 by vocabulary.
    return 0 if tensor.shape[1] == dim else 1


def _merge_shards(shards: list[dict[str, torch.Tensor]], paths: list[Path], dim: int) -> dict:
    if len(shards) == 1:
        return shards[0]
    keys = list(shards[0])
    for shard, path in zip(shards[1:], paths[1:]):
        if set(shard) != set(keys):
            differ = sorted(set(shard) ^ set(keys))
            raise CheckpointError(
                f"model-parallel shard {path} holds different keys than {paths[0].name} "
                f"(e.g. {differ[0]!r}); all consolidated.*.pth of a checkpoint hold the same keys."
            )
    merged = {}
    for key in keys:
        name = key.removesuffix(".weight").split(".")[-1]
        parts = [shard[key] for shard in shards]
        axis = _PARALLEL_DIM.get(name)
        if name == "tok_embeddings":
            axis = _embedding_dim(parts[0], dim)
        merged[key] = parts[0] if axis is None else torch.cat(parts, dim=axis)
    return merged


def _ffn_hidden(params: Mapping, source: str) -> int:
    """Meta's rule for the MLP width: 2/3 of 4*dim, scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * _param(params, "dim", source) / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple = _param(params, "multiple_of", source)
    return multiple * ((hidden + multiple - 1) // multiple)


def meta_params_to_hf_config(
    params: Mapping,
    state_dict_tt: Mapping[str, torch.Tensor] | None = None,
    *,
    max_position_embeddings: int = 8192,
    rope_scaling_factor: float = 8.0,
) -> dict:
    """Build a transformers Llama ``config.json`` dict from Meta ``params.json``.

    Vocabulary and MLP sizes come from ``state_dict_tt`` when given (``vocab_size`` is -1 in
    some params.json), otherwise from params. ``rope_scaling_factor`` is used when params set
    ``use_scaled_rope`` (8 for Llama 3.1, 32 for Llama 3.2).
    """
    source = "params.json"
    state_dict_tt = state_dict_tt or {}
    vocab = int(params.get("vocab_size", -1))
    if "tok_embeddings.weight" in state_dict_tt:
        vocab = state_dict_tt["tok_embeddings.weight"].shape[0]
    if vocab <= 0:
        raise CheckpointError(
            f"{source} has vocab_size {params.get('vocab_size')!r}; pass the state dict so the "
            f"vocabulary size can be read from tok_embeddings.weight."
        )
    gate = state_dict_tt.get("layers.0.mlp.gate_proj.weight")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": _param(params, "dim", source),
        "intermediate_size": gate.shape[0] if gate is not None else _ffn_hidden(params, source),
        "num_hidden_layers": _param(params, "n_layers", source),
        "num_attention_heads": _param(params, "n_heads", source),
        "num_key_value_heads": _param(params, "n_kv_heads", source),
        "rms_norm_eps": float(params.get("norm_eps", 1e-5)),
        "rope_theta": float(params.get("rope_theta", 10000.0)),
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "hidden_act": "silu",
        "tie_word_embeddings": bool(state_dict_tt) and "output.weight" not in state_dict_tt,
    }
    if params.get("use_scaled_rope"):
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": rope_scaling_factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    return config


def load_meta_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load ``consolidated.*.pth`` (one or more model-parallel shards) + ``params.json``.

    Returns ``(params, state_dict in tt naming)`` with q/k in the rotate-half layout.
    """
    directory = Path(directory)
    params_path = directory / "params.json"
    if not params_path.is_file():
        raise MissingFilesError(directory, "params.json")
    paths = sorted(directory.glob("consolidated.*.pth"))
    if not paths:
        raise MissingFilesError(directory, "weights consolidated.00.pth (, consolidated.01.pth...)")
    try:
        params = json.loads(params_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorruptFileError(params_path, f"invalid JSON ({error})") from error
    dim = _param(params, "dim", str(params_path))
    merged = _merge_shards([torch_load_dict(p) for p in paths], paths, dim)
    source = ", ".join(p.name for p in paths)
    state_dict = hf_to_tt(merged, META_LLAMA, source=str(directory / source))
    # Check before permuting: a wrong shape would otherwise fail inside reshape, unexplained.
    check_shapes(state_dict, meta_params_to_hf_config(params, state_dict), source=source)
    return params, _permute(state_dict, params, str(params_path), interleaved_to_half)


def save_meta_checkpoint(
    state_dict_tt: Mapping[str, torch.Tensor], params: Mapping, out_dir: str | Path
) -> Path:
    """Write a tt state dict as a single-shard Meta checkpoint; returns ``out_dir``."""
    state_dict = dict(state_dict_tt)
    check_shapes(state_dict, meta_params_to_hf_config(params, state_dict), source="the state dict")
    state_dict = _permute(state_dict, params, "params", half_to_interleaved)
    meta = {
        k: v.detach().to("cpu").contiguous() for k, v in tt_to_hf(state_dict, META_LLAMA).items()
    }
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        torch.save(meta, tmp / "consolidated.00.pth")
        text = json.dumps(dict(params), indent=2) + "\n"
        (tmp / "params.json").write_text(text, encoding="utf-8")
    return out_dir
