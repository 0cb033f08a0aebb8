"""The mixture-of-experts feed-forward: routing by hand, the grouped and loop paths agree
(outputs and gradients), and the load-balancing loss equals transformers' formula."""

from __future__ import annotations

import pytest
import torch
from tt_models.moe import MoEFeedForward


def _block(compute: str, norm: bool = False, top_k: int = 2) -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(16, 24, n_experts=4, top_k=top_k, norm_topk_prob=norm, compute=compute)


def test_each_token_gets_its_top_k_experts_weighted_by_their_probabilities():
    block = _block("loop")
    x = torch.randn(5, 16)
    probs = torch.softmax(block.router(x), dim=-1)
    expected = torch.zeros_like(x)
    for t in range(5):
        weights, chosen = probs[t].topk(2)
        for w, e in zip(weights, chosen):
            expected[t] += w * block.experts[int(e)](x[t])
    torch.testing.assert_close(block(x), expected)
    normalised = _block("loop", norm=True)
    weights, chosen = torch.softmax(normalised.router(x[:1]), dim=-1)[0].topk(2)
    by_hand = sum(
        w / weights.sum() * normalised.experts[int(e)](x[0]) for w, e in zip(weights, chosen)
    )
    torch.testing.assert_close(normalised(x[:1])[0], by_hand)


@pytest.mark.parametrize("top_k", [1, 2])
def test_grouped_and_loop_paths_agree_in_outputs_and_gradients(top_k):
    loop, grouped = _block("loop", top_k=top_k), _block("grouped", top_k=top_k)
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(2, 7, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_loop, out_grouped = loop(x), grouped(x2)
    torch.testing.assert_close(out_grouped, out_loop, rtol=1e-5, atol=1e-5)
    out_loop.square().sum().backward()
    out_grouped.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(loop.named_parameters(), grouped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_an_expert_no_token_picks_still_works_in_both_paths():
    for compute in ("loop", "grouped"):
        block = _block(compute, top_k=1)
        with torch.no_grad():
            block.router.weight.zero_()
            block.router.weight[2, 0] = 10.0  # every token with x[0] > 0 goes to expert 2
        x = torch.randn(6, 16).abs()
        torch.testing.assert_close(block(x), block.experts[2](x) * torch.softmax(
            block.router(x), -1)[:, 2:3])  # fmt: skip
        assert block.expert_load.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_aux_loss_is_transformers_load_balancing_loss():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    block = _block("loop")
    x = torch.randn(3, 5, 16)
    block(x)
    logits = block.router(x.reshape(-1, 16))
    expected = load_balancing_loss_func((logits,), num_experts=4, top_k=2)
    torch.testing.assert_close(block.aux_loss, expected)
    assert block.aux_loss.requires_grad and abs(block.expert_load.sum().item() - 1) < 1e-6


def test_z_loss_is_switch_transformers_router_z_loss():
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        router_z_loss_func,
    )

    block = _block("loop")
    x = torch.randn(3, 5, 16)
    block(x)
    logits = block.router(x.reshape(-1, 16))
    by_hand = (torch.logsumexp(logits, dim=-1) ** 2).mean()
    torch.testing.assert_close(block.z_loss, by_hand)
    torch.testing.assert_close(block.z_loss, router_z_loss_func(logits.reshape(3, 5, 4)))
    assert block.z_loss.requires_grad
    block.aux_loss = block.z_loss = None
    with torch.no_grad():  # a reference model's or a rollout's pass records nothing
        block(x)
    assert block.aux_loss is None and block.z_loss is None
    block.eval()  # nor does evaluation
    block(x)
    assert block.aux_loss is None and block.z_loss is None


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"top_k=5 must be in 1..n_experts=4"):
        MoEFeedForward(8, 8, n_experts=4, top_k=5, norm_topk_prob=False)
    with pytest.raises(ValueError, match=r"compute='fused'; valid: \['loop', 'grouped'\]"):
        MoEFeedForward(8, 8, n_experts=4, top_k=2, norm_topk_prob=False, compute="fused")
