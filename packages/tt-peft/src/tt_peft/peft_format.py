"""Read and write adapters in the PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``).

File keys are ``base_model.model.<HF module name>.lora_A.weight`` / ``.lora_B.weight`` and, for
DoRA, ``.lora_magnitude_vector`` (peft 0.21). ``key_map`` translates a tt module name to the HF
module name (for a transformers model the names already are HF names: leave it ``None``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tt_peft.apply import adapter_layers, apply_lora, linear_module_names
from tt_peft.layers import DoRALinear, LoRALinear, lora_scaling

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
# tt adapter parameter name -> suffix of the key in peft's file
PEFT_SUFFIXES = {
    "lora_a.weight": "lora_A.weight",
    "lora_b.weight": "lora_B.weight",
    "magnitude": "lora_magnitude_vector",
}
# adapter_config.json fields whose non-default values tt-peft cannot reproduce
_UNSUPPORTED_FIELDS = {
    "bias": "none",
    "fan_in_fan_out": False,
    "lora_bias": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "exclude_modules": None,
}

KeyMap = Callable[[str], str]


def _hyperparameters(layer: LoRALinear) -> dict[str, Any]:
    dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
    return {
        "r": layer.rank,
        "lora_alpha": layer.alpha,
        "lora_dropout": dropout,
        "use_dora": isinstance(layer, DoRALinear),
        "use_rslora": layer.use_rslora,
    }


def _shared_hyperparameters(layers: dict[str, LoRALinear]) -> dict[str, Any]:
    per_layer = {name: _hyperparameters(layer) for name, layer in layers.items()}
    first_name, first = next(iter(per_layer.items()))
    for name, params in per_layer.items():
        if params != first:
            raise ValueError(
                f"save_adapter needs one set of LoRA hyper-parameters; layer {name!r} has "
                f"{params} but {first_name!r} has {first}"
            )
    return first


def _target_modules(model: nn.Module, hf_names: list[str], key_map: KeyMap) -> list[str] | str:
    """Leaf names when they select exactly the adapted modules in peft, else an exact regex."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in hf_names})
    # Plain Linears outside the adapters (an adapter's own lora_a/lora_b have no HF name).
    inside = tuple(f"{name}." for name in adapter_layers(model))
    plain = [n for n in linear_module_names(model) if not n.startswith(inside)]
    exact = "(?:" + "|".join(re.escape(name) for name in hf_names) + ")"
    try:
        unadapted = [key_map(n).rsplit(".", 1)[-1] for n in plain]
    except Exception:
        # key_map cannot name some unadapted module (e.g. Phi-3's q_proj lives inside the
        # fused HF qkv_proj): leaf names cannot be proven unambiguous, so be exact.
        return exact
    if not set(unadapted) & set(leaves):
        return leaves
    return exact


def _adapter_config(
    model: nn.Module,
    hf_names: list[str],
    key_map: KeyMap,
    hyper: dict[str, Any],
    base_model_name_or_path: str | None,
    task_type: str | None,
) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "target_modules": _target_modules(model, hf_names, key_map),
        **hyper,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_pattern": None,
        "revision": None,
        **_UNSUPPORTED_FIELDS,
    }


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp (and safetensors) create files owner-only; give them the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _hf_names(layers: dict[str, LoRALinear], key_map: KeyMap) -> dict[str, str]:
    """tt module name -> HF module name, rejecting a key_map that merges two layers."""
    mapping = {name: key_map(name) for name in layers}
    seen: dict[str, str] = {}
    for name, hf in mapping.items():
        if hf in seen:
            raise ValueError(f"key_map sends both {seen[hf]!r} and {name!r} to {hf!r}")
        seen[hf] = name
    return mapping


def save_adapter(
    model: nn.Module,
    adapter_dir: str | os.PathLike[str],
    base_model_name_or_path: str | None = None,
    key_map: KeyMap | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> Path:
    """Write ``model``'s adapters to ``adapter_dir`` so ``peft.PeftModel.from_pretrained`` loads them.

    ``key_map`` turns a tt module name into the HF module name (identity when ``None``).
    Files are written to temporary names and renamed into place. Returns the directory.
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no adapters to save; call apply_lora first")
    key_map = key_map or (lambda name: name)
    hf_names = _hf_names(layers, key_map)
    tensors = {
        f"{KEY_PREFIX}{hf_names[name]}.{PEFT_SUFFIXES[param_name]}": (
            layer.get_parameter(param_name).detach().to("cpu").contiguous()
        )
        for name, layer in layers.items()
        for param_name in layer.adapter_param_names()
    }
    config = _adapter_config(
        model,
        list(hf_names.values()),
        key_map,
        _shared_hyperparameters(layers),
        base_model_name_or_path,
        task_type,
    )
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config_text))
    return out


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``adapter_dir``, checked to be a LoRA config tt-peft supports."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(adapter_dir)!r}")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{path}: peft_type is {config.get('peft_type')!r}; only 'LORA' is supported"
        )
    for field, default in _UNSUPPORTED_FIELDS.items():
        if config.get(field) not in (None, False, "none", {}, []):
            raise ValueError(
                f"{path}: {field}={config[field]!r} is not supported by tt-peft "
                f"(supported: {default!r})"
            )
    return config


def _check_layer_matches(name: str, layer: LoRALinear, config: dict[str, Any], path: Path) -> None:
    use_dora = bool(config.get("use_dora", False))
    use_rslora = bool(config.get("use_rslora", False))
    expected = lora_scaling(config["r"], config["lora_alpha"], use_rslora)
    if isinstance(layer, DoRALinear) != use_dora or abs(layer.scaling - expected) > 1e-12:
        raise ValueError(
            f"layer {name!r} (rank {layer.rank}, scaling {layer.scaling:g}, "
            f"dora={isinstance(layer, DoRALinear)}) does not fit {path} (r={config['r']}, "
            f"lora_alpha={config['lora_alpha']}, use_rslora={use_rslora}, use_dora={use_dora})"
        )


def _split_key(key: str, path: Path) -> tuple[str, str]:
    """``base_model.model.<module>.<suffix>`` -> (module, tt parameter name)."""
    for param_name, suffix in PEFT_SUFFIXES.items():
        if key.startswith(KEY_PREFIX) and key.endswith("." + suffix):
            return key[len(KEY_PREFIX) : -len(suffix) - 1], param_name
    raise ValueError(
        f"{path}: tensor {key!r} is not a LoRA tensor tt-peft can load (expected "
        f"'{KEY_PREFIX}<module>.' followed by one of {sorted(PEFT_SUFFIXES.values())})"
    )


def load_adapter(
    model: nn.Module,
    adapter_dir: str | os.PathLike[str],
    key_map: KeyMap | None = None,
    quantize_base: bool = False,
) -> nn.Module:
    """Load a peft-saved LoRA/DoRA adapter into ``model`` (in place) and return ``model``.

    A model without adapters gets them first, as the config describes (``target_modules`` are
    matched against ``key_map(name)``); a model that already has adapters must fit the config.
    Every adapter tensor must be in the file and every file tensor must fit a layer.
    """
    config = read_adapter_config(adapter_dir)
    key_map = key_map or (lambda name: name)
    if not adapter_layers(model):
        apply_lora(
            model,
            config["target_modules"],
            rank=config["r"],
            alpha=config["lora_alpha"],
            dropout=config.get("lora_dropout", 0.0),
            use_dora=config.get("use_dora", False),
            quantize_base=quantize_base,
            use_rslora=config.get("use_rslora", False),
            name_map=key_map,
        )
    path = Path(adapter_dir) / WEIGHTS_NAME
    layers = adapter_layers(model)
    for name, layer in layers.items():
        _check_layer_matches(name, layer, config, path)
    by_hf_name = {hf: name for name, hf in _hf_names(layers, key_map).items()}
    expected = {
        f"{name}.{p}" for name, layer in layers.items() for p in layer.adapter_param_names()
    }
    loaded: set[str] = set()
    for key, tensor in load_file(path).items():
        hf_module, param_name = _split_key(key, path)
        if hf_module not in by_hf_name:
            raise ValueError(
                f"{path}: tensor {key!r} is for module {hf_module!r}, which has no adapter "
                f"(adapted modules: {sorted(by_hf_name)[:8]}...)"
            )
        tt_name = f"{by_hf_name[hf_module]}.{param_name}"
        _copy_into(model.get_parameter(tt_name), tensor, key, tt_name, path)
        loaded.add(tt_name)
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(
            f"{path} lacks tensors for {len(missing)} adapter parameters: {missing[:6]}"
        )
    return model


@torch.no_grad()
def _copy_into(
    param: torch.Tensor, tensor: torch.Tensor, key: str, tt_name: str, path: Path
) -> None:
    if tensor.shape != param.shape:
        raise ValueError(
            f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but {tt_name!r} needs "
            f"{tuple(param.shape)} (different rank or a different base model?)"
        )
    param.copy_(tensor.to(device=param.device, dtype=param.dtype))
