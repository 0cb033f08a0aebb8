"""apply_lora, target matching and the adapter helpers on a tiny transformers Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from tt_peft import (
    DoRALinear,
    LoRALinear,
    adapter_layers,
    adapter_params,
    adapter_state_dict,
    apply_lora,
    disable_adapters,
    mark_only_adapters_trainable,
    merge_adapters,
    merged_state_dict,
)

ATTN = "model.layers.{}.self_attn.{}"


def randomize_adapters(model: nn.Module) -> None:
    """Non-zero B (and perturbed magnitude) so adapters change the output."""
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            nn.init.normal_(layer.lora_b.weight, std=0.1)
            if isinstance(layer, DoRALinear):
                layer.magnitude.mul_(1.2)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["q_proj"], [ATTN.format(0, "q_proj"), ATTN.format(1, "q_proj")]),
        (["self_attn.v_proj"], [ATTN.format(0, "v_proj"), ATTN.format(1, "v_proj")]),
        (
            ["re:model\\.layers\\.1\\.self_attn\\.[qk]_proj"],
            [ATTN.format(1, "q_proj"), ATTN.format(1, "k_proj")],
        ),
        (r".*\.0\.self_attn\.o_proj", [ATTN.format(0, "o_proj")]),
        (["lm_head"], ["lm_head"]),
    ],
)
def test_target_matching_rules(load_llama, targets, expected: list[str]) -> None:
    model = apply_lora(load_llama(), targets, rank=2, alpha=4)
    assert list(adapter_layers(model)) == expected


def test_include_leaves_modules_out_of_the_candidates(load_llama) -> None:
    """A frozen part takes no adapters, and an entry matching only there is an error."""
    model = apply_lora(load_llama(), ["q_proj"], rank=2, alpha=4, include=lambda n: ".1." not in n)
    assert list(adapter_layers(model)) == [ATTN.format(0, "q_proj")]
    with pytest.raises(ValueError, match=r"entries \['lm_head'\] match none of the 14"):
        apply_lora(load_llama(), ["lm_head"], rank=2, alpha=4, include=lambda n: n != "lm_head")


def test_plain_entry_does_not_match_a_partial_leaf(load_llama) -> None:
    # "proj" is neither a module name nor a dotted suffix of "q_proj"
    with pytest.raises(ValueError, match=r"entries \['proj'\] match none of the 15 nn.Linear"):
        apply_lora(load_llama(), ["proj"], rank=2, alpha=4)


def test_unmatched_target_lists_available_linear_names(load_llama) -> None:
    with pytest.raises(ValueError) as info:
        apply_lora(load_llama(), ["q_proj", "query"], rank=2, alpha=4)
    message = str(info.value)
    assert "['query']" in message
    assert "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj'," in message
    assert "'model.layers.0.self_attn.q_proj'" in message


def test_empty_targets_rejected(load_llama) -> None:
    with pytest.raises(ValueError, match=r"non-empty list.*got \[\]"):
        apply_lora(load_llama(), [], rank=2, alpha=4)


def test_rank_larger_than_layer_names_the_layer(load_llama) -> None:
    # k_proj is 64 -> 32 (2 kv heads of 16)
    with pytest.raises(
        ValueError, match=r"rank 48 .*'model.layers.0.self_attn.k_proj'.*out_features=32"
    ):
        apply_lora(load_llama(), ["q_proj", "k_proj"], rank=48, alpha=4)


def test_applying_twice_is_rejected(load_llama) -> None:
    model = apply_lora(load_llama(), ["q_proj"], rank=2, alpha=4)
    with pytest.raises(ValueError, match="already has adapters"):
        apply_lora(model, ["v_proj"], rank=2, alpha=4)


@pytest.mark.parametrize("use_dora", [False, True])
def test_state_dict_keeps_base_keys_and_adds_adapter_keys(load_llama, use_dora: bool) -> None:
    model = load_llama()
    base_sd = model.state_dict()
    apply_lora(model, ["q_proj", "down_proj"], rank=2, alpha=4, use_dora=use_dora)
    sd = model.state_dict()
    assert set(base_sd) <= set(sd)
    for key, value in base_sd.items():
        torch.testing.assert_close(sd[key], value)
    new = sorted(set(sd) - set(base_sd))
    per_layer = ["lora_a.weight", "lora_b.weight"] + (["magnitude"] if use_dora else [])
    expected = sorted(f"{name}.{p}" for name in adapter_layers(model) for p in per_layer)
    assert new == expected
    assert sorted(adapter_params(model)) == expected
    assert sorted(adapter_state_dict(model)) == expected


def test_mark_only_adapters_trainable(load_llama, tokens) -> None:
    model = apply_lora(load_llama(), ["q_proj", "v_proj"], rank=2, alpha=4, use_dora=True)
    mark_only_adapters_trainable(model)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(adapter_params(model))
    model(input_ids=tokens, labels=tokens).loss.backward()
    assert all(p.grad is not None for p in adapter_params(model).values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_mark_only_adapters_trainable_without_adapters(load_llama) -> None:
    with pytest.raises(ValueError, match="LlamaForCausalLM has no adapters; call apply_lora"):
        mark_only_adapters_trainable(load_llama())


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_adapters_gives_plain_linears_with_equal_logits(load_llama, tokens, use_dora) -> None:
    model = apply_lora(
        load_llama(), ["q_proj", "o_proj", "up_proj"], rank=4, alpha=8, use_dora=use_dora
    )
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(input_ids=tokens).logits
        merged = merge_adapters(model)
        actual = merged(input_ids=tokens).logits
    assert merged is model and not adapter_layers(model)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert set(model.state_dict()) == set(load_llama().state_dict())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_state_dict_equals_merge_without_changing_model(
    load_llama, tokens, use_dora
) -> None:
    model = apply_lora(load_llama(), ["q_proj", "down_proj"], rank=4, alpha=8, use_dora=use_dora)
    randomize_adapters(model)
    merged = merged_state_dict(model)
    assert adapter_layers(model), "merged_state_dict must not remove the adapters"
    expected = merge_adapters(copy.deepcopy(model)).state_dict()
    assert set(merged) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True])
def test_disable_adapters_equals_base_model(load_llama, tokens, use_dora: bool) -> None:
    base = load_llama()
    model = apply_lora(load_llama(), ["q_proj", "gate_proj"], rank=4, alpha=8, use_dora=use_dora)
    randomize_adapters(model)
    mark_only_adapters_trainable(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        adapted = model(input_ids=tokens).logits
        with disable_adapters(model):
            disabled = model(input_ids=tokens).logits
        after = model(input_ids=tokens).logits
        expected = base(input_ids=tokens).logits
    torch.testing.assert_close(disabled, expected)
    assert not torch.allclose(adapted, expected)
    torch.testing.assert_close(after, adapted)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_dora_magnitude_follows_weights_loaded_after_apply(load_llama, tokens) -> None:
    loaded = load_llama()
    torch.manual_seed(5)
    model = type(loaded)(loaded.config).eval()  # different random weights
    apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4, use_dora=True)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    # the magnitude is derived from the incoming weight, so only A and B are reported missing
    expected_missing = [n for n in adapter_params(model) if not n.endswith("magnitude")]
    assert sorted(result.missing_keys) == sorted(expected_missing)
    layer = model.model.layers[0].self_attn.q_proj
    expected_norm = loaded.model.layers[0].self_attn.q_proj.weight.norm(dim=1)
    torch.testing.assert_close(layer.magnitude.detach(), expected_norm)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, loaded(input_ids=tokens).logits)


def test_works_on_any_module_tree() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4)))
    apply_lora(model, ["re:2\\.0"], rank=2, alpha=2)
    assert isinstance(model[2][0], LoRALinear) and isinstance(model[0], nn.Linear)
    assert sorted(model.state_dict()) == [
        "0.bias",
        "0.weight",
        "2.0.bias",
        "2.0.lora_a.weight",
        "2.0.lora_b.weight",
        "2.0.weight",
    ]
