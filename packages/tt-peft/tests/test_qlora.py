"""QLoRA / QDoRA: NF4 base weights through torchao."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from tt_peft import (
    DoRALinear,
    LoRALinear,
    adapter_layers,
    adapter_params,
    apply_lora,
    mark_only_adapters_trainable,
    merge_adapters,
)
from tt_peft._nf4 import dense, nf4_nbytes

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def bf16_linear(in_features: int = 256, out_features: int = 128) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    nn.init.normal_(linear.weight, std=0.02)
    return linear


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_base_storage_is_under_03x_of_bf16(cls: type[LoRALinear]) -> None:
    linear = bf16_linear()
    layer = cls.from_linear(linear, rank=8, alpha=16, quantize_base=True)
    assert layer.is_quantized and not layer.weight.requires_grad
    bf16_bytes = linear.weight.numel() * 2
    assert nf4_nbytes(layer.weight) <= 0.3 * bf16_bytes


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_forward_within_nf4_tolerance_of_bf16(cls: type[LoRALinear]) -> None:
    linear = bf16_linear()
    layer = cls.from_linear(linear, rank=8, alpha=16, quantize_base=True)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    # exactly the dequantized weight is used ...
    dequantized = dense(layer.weight, torch.bfloat16)
    torch.testing.assert_close(out, x @ dequantized.T)
    # ... and 4-bit NormalFloat stays within ~10% of the bf16 layer (measured ~0.09 here)
    assert relative_error(out, linear(x)) < 0.12


def test_qdora_magnitude_comes_from_the_quantized_weight() -> None:
    layer = DoRALinear.from_linear(bf16_linear(), rank=8, alpha=16, quantize_base=True)
    expected = dense(layer.weight, torch.bfloat16).norm(dim=1)
    torch.testing.assert_close(layer.magnitude.detach(), expected)


@pytest.mark.parametrize("use_dora", [False, True])
def test_bf16_qlora_trains_only_adapters(load_llama, tokens, use_dora: bool) -> None:
    model = load_llama().to(torch.bfloat16)
    apply_lora(model, ALL_LINEARS, rank=4, alpha=8, use_dora=use_dora, quantize_base=True)
    mark_only_adapters_trainable(model)
    assert all(layer.is_quantized for layer in adapter_layers(model).values())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):  # NF4 dequantization is slow on CPU; two steps show the loss falls
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        trainable = adapter_params(model)
        assert all(
            p.grad is not None and p.grad.dtype == torch.bfloat16 for p in trainable.values()
        )
        frozen = [n for n, p in model.named_parameters() if n not in trainable]
        assert all(model.get_parameter(n).grad is None for n in frozen)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_dequantizes_to_plain_linear(load_llama, tokens, use_dora: bool) -> None:
    model = load_llama()
    apply_lora(
        model, ["q_proj", "down_proj"], rank=4, alpha=8, use_dora=use_dora, quantize_base=True
    )
    torch.manual_seed(0)
    for layer in adapter_layers(model).values():
        nn.init.normal_(layer.lora_b.weight, std=0.1)
    with torch.no_grad():
        expected = model(input_ids=tokens).logits
        merge_adapters(model)
        actual = model(input_ids=tokens).logits
    merged = model.model.layers[0].mlp.down_proj
    assert type(merged) is nn.Linear and type(merged.weight.data) is torch.Tensor
    assert merged.weight.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_full_precision_state_dict_loads_into_quantized_model(load_llama, tokens, use_dora) -> None:
    source = load_llama()
    quantized_after_load = apply_lora(
        load_llama(), ALL_LINEARS, rank=4, alpha=8, use_dora=use_dora, quantize_base=True
    )
    torch.manual_seed(9)
    other = type(source)(source.config).eval()  # different random weights
    apply_lora(other, ALL_LINEARS, rank=4, alpha=8, use_dora=use_dora, quantize_base=True)
    other.load_state_dict(source.state_dict(), strict=False)
    for name, layer in adapter_layers(other).items():
        assert layer.is_quantized
        expected = quantized_after_load.get_submodule(name)
        torch.testing.assert_close(dense(layer.weight), dense(expected.weight))
        if use_dora:
            torch.testing.assert_close(layer.magnitude, expected.magnitude)
    with torch.no_grad():
        torch.testing.assert_close(
            other(input_ids=tokens).logits, quantized_after_load(input_ids=tokens).logits
        )


def test_weight_size_not_multiple_of_block_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"cannot NF4-quantize 'odd': weight shape \(5, 9\)"):
        LoRALinear.from_linear(nn.Linear(9, 5), rank=2, alpha=4, quantize_base=True, name="'odd'")


def test_missing_torchao_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization.quantize_.workflows.nf4", None)
    with pytest.raises(ImportError, match=r"pip install 'tt-peft\[nf4\]'"):
        LoRALinear.from_linear(bf16_linear(), rank=2, alpha=4, quantize_base=True)
