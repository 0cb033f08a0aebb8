"""LoRALinear / DoRALinear against peft's layers and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from tt_peft import DoRALinear, LoRALinear


class OneLinear(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 48, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def peft_and_ours(use_dora: bool, bias: bool, use_rslora: bool, dropout: float = 0.0):
    """A peft-wrapped Linear with random A, B (and magnitude) and our layer with copies of them."""
    torch.manual_seed(0)
    base = OneLinear(bias)
    ours_cls = DoRALinear if use_dora else LoRALinear
    ours = ours_cls.from_linear(base.proj, rank=4, alpha=12, dropout=dropout, use_rslora=use_rslora)
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        lora_dropout=dropout,
        target_modules=["proj"],
        use_dora=use_dora,
        use_rslora=use_rslora,
        init_lora_weights=False,  # random B, so the adapter is not a no-op
    )
    peft_model = get_peft_model(base, config)
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        ours.lora_a.weight.copy_(layer.lora_A["default"].weight)
        ours.lora_b.weight.copy_(layer.lora_B["default"].weight)
        if use_dora:
            magnitude = layer.lora_magnitude_vector["default"].weight
            magnitude.mul_(torch.linspace(0.5, 1.5, magnitude.numel()))
            ours.magnitude.copy_(magnitude)
    return peft_model, ours


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_and_grads_equal_peft(use_dora: bool, bias: bool, use_rslora: bool) -> None:
    peft_model, ours = peft_and_ours(use_dora, bias, use_rslora)
    x = torch.randn(3, 5, 32)
    expected = peft_model(x)
    actual = ours(x)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    expected.square().sum().backward()
    actual.square().sum().backward()
    layer = peft_model.base_model.model.proj

    def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
        # float32 summation-order noise: entries are sums over tokens that partly cancel, so
        # the bound is relative to the gradient's scale (the largest entries are in the
        # hundreds); in float64 the two agree to 1e-13.
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, atol=1e-6 * scale, rtol=1e-5)

    close(ours.lora_a.weight.grad, layer.lora_A["default"].weight.grad)
    close(ours.lora_b.weight.grad, layer.lora_B["default"].weight.grad)
    if use_dora:
        close(ours.magnitude.grad, layer.lora_magnitude_vector["default"].weight.grad)
    assert ours.weight.grad is None


@pytest.mark.parametrize("use_dora", [False, True])
def test_training_dropout_equals_peft(use_dora: bool) -> None:
    peft_model, ours = peft_and_ours(use_dora, bias=True, use_rslora=False, dropout=0.3)
    peft_model.train()
    ours.train()
    x = torch.randn(4, 32)
    torch.manual_seed(7)
    expected = peft_model(x)
    torch.manual_seed(7)
    actual = ours(x)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def test_lora_matches_hand_computed_formula() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = LoRALinear.from_linear(linear, rank=2, alpha=6)
    nn.init.normal_(layer.lora_b.weight)
    x = torch.randn(5, 16)
    a, b = layer.lora_a.weight, layer.lora_b.weight
    expected = x @ linear.weight.T + linear.bias + 3.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected)
    rs = LoRALinear(16, 8, rank=4, alpha=6, use_rslora=True)
    assert rs.scaling == pytest.approx(6 / math.sqrt(4))


def test_dora_matches_hand_computed_formula() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = DoRALinear.from_linear(linear, rank=2, alpha=2)
    torch.testing.assert_close(layer.magnitude.detach(), linear.weight.detach().norm(dim=1))
    nn.init.normal_(layer.lora_b.weight)
    with torch.no_grad():
        layer.magnitude.mul_(2.0)
    merged = linear.weight + layer.lora_b.weight @ layer.lora_a.weight
    direction = merged / merged.norm(dim=1, keepdim=True)
    x = torch.randn(5, 16)
    expected = x @ (layer.magnitude[:, None] * direction).T + linear.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_fresh_layer_equals_base_and_shares_weight(cls: type[LoRALinear]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = cls.from_linear(linear, rank=4, alpha=8)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), linear(x))
    assert layer.weight.data_ptr() == linear.weight.data_ptr()  # no copy of the base weight
    assert not layer.weight.requires_grad
    assert layer.lora_a.weight.requires_grad and layer.lora_b.weight.requires_grad


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merged_weight_equals_forward(cls: type[LoRALinear]) -> None:
    torch.manual_seed(0)
    layer = cls.from_linear(nn.Linear(16, 8), rank=4, alpha=8)
    nn.init.normal_(layer.lora_b.weight)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer.to_linear()(x), layer(x))


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_bf16_training_step_updates_only_adapters(cls: type[LoRALinear]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 32, dtype=torch.bfloat16)
    layer = cls.from_linear(linear, rank=4, alpha=8)
    base_before = layer.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    out = layer(torch.randn(4, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    optimizer.step()
    assert layer.lora_b.weight.abs().sum() > 0
    assert layer.lora_b.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, base_before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, r"rank must be a positive int, got 0 for layer 'blk\.proj'"),
        ({"rank": -2}, r"got -2 for layer 'blk\.proj'"),
        ({"rank": 9}, r"rank 9 is larger than layer 'blk\.proj' allows.*out_features=8"),
        ({"alpha": 0}, r"alpha must be > 0, got 0 for layer 'blk\.proj'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0 for layer 'blk\.proj'"),
    ],
)
def test_bad_hyperparameters_name_the_layer(kwargs: dict, message: str) -> None:
    args = {"rank": 4, "alpha": 8.0, "dropout": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        LoRALinear.from_linear(nn.Linear(16, 8), name="'blk.proj'", **args)
