"""Put adapters on a model, find them, train only them, merge them, switch them off."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tt_peft.layers import DoRALinear, LoRALinear
from tt_peft.targets import match_targets, normalize_targets


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` submodules of ``model`` (the root excluded)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Linear)]


def adapter_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA/DoRA layer in ``model`` by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, new)


def apply_lora(
    model: nn.Module,
    target_modules: str | Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
    use_rslora: bool = False,
    name_map: Callable[[str], str] | None = None,
    include: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Replace the ``nn.Linear`` modules selected by ``target_modules`` with LoRA/DoRA layers.

    Works in place on any module tree (tt_models or transformers models) and returns ``model``.
    Matching follows peft (see :mod:`tt_peft.targets`): ``"q_proj"`` selects every module whose
    name ends in ``.q_proj``; ``"re:..."`` entries and a bare string are full-match regexes.
    ``name_map`` translates module names before matching (e.g. tt -> HF names); ``include``
    (given a module's own name) leaves modules out of the candidates altogether, e.g. the
    modules of a frozen part of the model.

    The base weights are frozen and keep their state-dict keys; everything else keeps its
    ``requires_grad`` (call :func:`mark_only_adapters_trainable` to train adapters alone).

    QLoRA/QDoRA (``quantize_base=True``): load the full-precision weights FIRST, then call this,
    which quantizes those weights to NF4 and (DoRA) sets the magnitude from them. Loading a
    full-precision state dict afterwards also works: NF4 weights are re-quantized on load.

    Example::

        apply_lora(model, ["q_proj", "v_proj"], rank=8, alpha=16)
        mark_only_adapters_trainable(model)
    """
    if adapter_layers(model):
        raise ValueError(
            f"model already has adapters on {list(adapter_layers(model))[:4]}...; "
            "merge_adapters(model) first or build a fresh model"
        )
    names = [n for n in linear_module_names(model) if include is None or include(n)]
    rename = name_map or (lambda n: n)
    mapped = {rename(n): n for n in names}
    what = f"nn.Linear modules of {type(model).__name__}"
    selected = match_targets(normalize_targets(target_modules), list(mapped), what)
    layer_cls = DoRALinear if use_dora else LoRALinear
    for mapped_name in selected:
        name = mapped[mapped_name]
        linear = model.get_submodule(name)
        adapted = layer_cls.from_linear(
            linear,
            rank,
            alpha,
            dropout=dropout,
            use_rslora=use_rslora,
            quantize_base=quantize_base,
            name=repr(name),
        )
        adapted.train(linear.training)
        _replace_module(model, name, adapted)
    return model


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters (``lora_a``/``lora_b`` weights, DoRA ``magnitude``) by full name."""
    return {
        f"{layer_name}.{param_name}": layer.get_parameter(param_name)
        for layer_name, layer in adapter_layers(model).items()
        for param_name in layer.adapter_param_names()
    }


def mark_only_adapters_trainable(model: nn.Module) -> nn.Module:
    """Set ``requires_grad`` True on adapter parameters and False on every other parameter."""
    trainable = {id(p) for p in adapter_params(model).values()}
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no adapters; call apply_lora first")
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached adapter tensors keyed by their ``model.state_dict()`` names (tt layout)."""
    return {name: param.detach() for name, param in adapter_params(model).items()}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict :func:`merge_adapters` would produce, leaving ``model`` untouched.

    Adapter tensors are dropped and each adapted ``<name>.weight`` holds ``W + s B A`` (DoRA
    rescaled, NF4 dequantized), so a checkpoint can be written mid-training without a second
    copy of the model.
    """
    layers = adapter_layers(model)
    adapter_keys = {
        f"{name}.{p}" for name, layer in layers.items() for p in layer.adapter_param_names()
    }
    merged = {k: v for k, v in model.state_dict().items() if k not in adapter_keys}
    for name, layer in layers.items():
        merged[f"{name}.weight"] = layer.merged_weight().detach()
    return merged


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, replacing each layer by a plain ``nn.Linear``.

    In place; returns ``model`` so the result saves as an ordinary checkpoint. DoRA layers
    apply their magnitude rescaling; NF4 bases are dequantized to the adapter dtype.
    """
    if isinstance(model, LoRALinear):
        return model.to_linear()
    for name, layer in adapter_layers(model).items():
        merged = layer.to_linear()
        merged.train(layer.training)
        _replace_module(model, name, merged)
    return model


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base function (adapters bypassed).

    This gives the frozen reference model of DPO / distillation without a second copy.
    ``requires_grad`` flags are not touched; the previous per-layer state is restored on exit.
    """
    layers = list(adapter_layers(model).values())
    previous = [layer.adapters_disabled for layer in layers]
    for layer in layers:
        layer.adapters_disabled = True
    try:
        yield model
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.adapters_disabled = was_disabled
