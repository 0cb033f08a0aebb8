"""Post-training quantization with torchao, saved so that ``from_pretrained`` restores it.

A quantized model directory holds ``config.json`` (the model's HF config plus a
``tt_quantization`` field: the quantization scheme's name and its plain arguments), the
tokenizer files, and ``quantized_model.pt``: the tt state dict with torchao's quantized
tensors (``torch.save``; it loads with ``weights_only=True``). transformers cannot load this
directory; tt's ``from_pretrained`` (so ``generate`` and ``evaluate``) can.

A model directory is data, whoever sent it: ``tt_quantization`` is looked up in
:data:`RESTORABLE_SCHEMES` by name and called with plain values only, and anything else is
refused before a single module is imported. So only these schemes can be saved.

    model = from_pretrained("outputs/tiny_full/step_1000")
    quantize(model, {"_component_": "torchao.quantization.Int8WeightOnlyConfig"})
    save_quantized(model, "outputs/tiny_int8", quantizer=..., source_dir=...)
    model = from_pretrained("outputs/tiny_int8")  # quantized again, same tensors
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tt_ckpt import atomic_directory, copy_auxiliary_files
from tt_models import build_model, from_hf_config, to_hf_config

from tt_recipes.config import instantiate

QUANTIZED_WEIGHTS = "quantized_model.pt"
CONFIG_FIELD = "tt_quantization"

# The schemes a quantized directory may name (as the ``_component_`` a user's config gives
# them): module and attribute of each, imported only after the name matched.
RESTORABLE_SCHEMES: dict[str, tuple[str, str]] = {
    "torchao.quantization.Int8WeightOnlyConfig": ("torchao.quantization", "Int8WeightOnlyConfig"),
    "torchao.quantization.Int8DynamicActivationInt8WeightConfig": (
        "torchao.quantization",
        "Int8DynamicActivationInt8WeightConfig",
    ),
    "tt_recipes.quantization.intx_weight_config": ("tt_recipes.quantization", "intx_weight_config"),
}
_PLAIN = (bool, int, float, str, type(None))


def check_restorable(quantizer: Any, where: str) -> tuple[str, dict[str, Any]]:
    """The scheme name and plain arguments of a quantizer mapping, or a ValueError naming
    ``where`` it came from; imports nothing."""
    if not isinstance(quantizer, Mapping) or not isinstance(quantizer.get("_component_"), str):
        raise ValueError(
            f"{where}: expected a mapping with a '_component_' naming a quantization scheme, "
            f"got {quantizer!r}"
        )
    name = quantizer["_component_"]
    if name not in RESTORABLE_SCHEMES:
        raise ValueError(
            f"{where}: quantization scheme {name!r} is not one tt saves and restores; use one of "
            f"{', '.join(RESTORABLE_SCHEMES)}"
        )
    args = {k: v for k, v in quantizer.items() if k != "_component_"}
    for key, value in args.items():
        if not isinstance(key, str) or not isinstance(value, _PLAIN):
            raise ValueError(
                f"{where}: argument {key!r} of {name} is {value!r}; a saved quantization scheme "
                "takes only plain values (numbers, strings, booleans, null)"
            )
    return name, args


def restorable_config(quantizer: Any, where: str = "quantizer") -> Any:
    """The torchao config of a quantizer mapping from :data:`RESTORABLE_SCHEMES`, built from
    its plain arguments (the only way a saved directory's ``tt_quantization`` is read)."""
    import importlib
    import inspect

    name, args = check_restorable(quantizer, where)
    module, attribute = RESTORABLE_SCHEMES[name]
    scheme = getattr(importlib.import_module(module), attribute)
    try:
        inspect.signature(scheme).bind(**args)
    except TypeError as e:
        raise ValueError(f"{where}: the arguments {args} do not fit {name}: {e}") from None
    return _check_torchao(scheme(**args), name)


def torchao_config(quantizer: Mapping[str, Any]) -> Any:
    """Instantiate a ``_component_`` mapping from the user's own config and check that it is
    a torchao quantization config (``torchao.quantization.Int8WeightOnlyConfig``, ...)."""
    return _check_torchao(instantiate(quantizer), quantizer.get("_component_"))


def _check_torchao(config: Any, name: Any) -> Any:
    from torchao.core.config import AOBaseConfig

    if not isinstance(config, AOBaseConfig):
        raise TypeError(
            f"quantizer: {name!r} built a {type(config).__name__}, not a torchao quantization "
            "config; use e.g. torchao.quantization.Int8WeightOnlyConfig, "
            "Int8DynamicActivationInt8WeightConfig or tt_recipes.quantization.intx_weight_config"
        )
    return config


def intx_weight_config(bits: int = 4, group_size: int = 32, int8_activations: bool = False) -> Any:
    """A torchao config for ``bits``-bit integer weights (1..8) in groups of ``group_size``
    along the input dimension, written with plain numbers for YAML; with
    ``int8_activations`` the activations are quantized to int8 per token as well. Both run
    on CPU."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if not 1 <= bits <= 8:
        raise ValueError(f"quantizer.bits must be in 1..8, got {bits}")
    weight_dtype = getattr(torch, f"int{bits}")
    if int8_activations:
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=weight_dtype, weight_granularity=PerGroup(group_size)
        )
    return IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=PerGroup(group_size))


def quantize(model: torch.nn.Module, quantizer: Mapping[str, Any] | Any) -> int:
    """Quantize every ``nn.Linear`` of ``model`` in place (embeddings and norms keep their
    dtype) with a ``_component_`` mapping or a built torchao config; returns how many layers
    were quantized."""
    from torchao.quantization import quantize_

    config = torchao_config(quantizer) if isinstance(quantizer, Mapping) else quantizer
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantize_(model, config)
    return linears


def save_quantized(
    model: torch.nn.Module,
    output_dir: str | Path,
    *,
    quantizer: Mapping[str, Any],
    source_dir: str | Path | None = None,
    config_updates: Mapping[str, Any] | None = None,
) -> Path:
    """Write a quantized model directory (atomically); tokenizer files come from
    ``source_dir``. ``quantizer`` must be one of :data:`RESTORABLE_SCHEMES`."""
    check_restorable(quantizer, "quantizer")
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    config = to_hf_config(model.config, dtype=dtype)
    if source_dir is not None and (Path(source_dir) / "config.json").is_file():
        source = json.loads((Path(source_dir) / "config.json").read_text())
        config = {**source, **{k: v for k, v in config.items() if v is not None}}
    config.update(config_updates or {})
    config[CONFIG_FIELD] = dict(quantizer)
    output_dir = Path(output_dir)
    try:
        with atomic_directory(output_dir) as tmp:
            if source_dir is not None:
                copy_auxiliary_files(source_dir, tmp)
            torch.save(model.state_dict(), tmp / QUANTIZED_WEIGHTS)
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        from tt_recipes.checkpointing import CheckpointSaveError, disk_full, is_disk_full

        if not is_disk_full(e):
            raise
        message = disk_full(output_dir, model_bytes(model))
        raise CheckpointSaveError(f"{message}; nothing of it was kept") from e
    return output_dir


def load_quantized(
    directory: str | Path, config: Mapping[str, Any], dtype: torch.dtype, device: Any
) -> torch.nn.Module:
    """Rebuild the model ``config`` describes, quantize it the same way (giving its layers
    the right tensor types) and assign the saved quantized tensors.

    ``config`` comes from a file: its scheme is checked against :data:`RESTORABLE_SCHEMES`
    before anything is imported or built."""
    scheme = restorable_config(config[CONFIG_FIELD], f"{directory}/config.json {CONFIG_FIELD}")
    path = Path(directory) / QUANTIZED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: config.json says the model is quantized ({CONFIG_FIELD}) but "
            f"{QUANTIZED_WEIGHTS} is missing"
        )
    model = build_model(from_hf_config(dict(config)), device="meta", dtype=dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # defined values to quantize; every one is replaced below
    quantize(model, scheme)
    state = torch.load(path, map_location=device, weights_only=True, mmap=True)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the model of its config.json: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    return model.eval()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (quantized tensors: their packed data
    and scales; a tied weight once)."""
    return sum(_tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])


def _tensor_bytes(tensor: torch.Tensor) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)  # torchao tensor subclasses
    if flatten is None:
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
