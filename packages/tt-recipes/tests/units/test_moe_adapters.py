"""Adapters on a mixture of experts: QLoRA quantizes every expert it adapts and trains only the
adapters (the load-balancing loss included), and grouped compute, which stacks plain weights,
gives way to the loop when the experts carry adapters."""

from __future__ import annotations

import torch
import tt_models
from tt_models import DecoderConfig, build_model, moe_blocks, take_balance
from tt_models.moe import MoEFeedForward
from tt_peft import adapter_params, apply_lora, mark_only_adapters_trainable
from tt_peft._nf4 import is_nf4

EVERY_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_moe() -> tt_models.TransformerDecoder:
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                           hidden_dim=128, max_seq_len=64, n_experts=4, experts_per_token=2,
                           moe_hidden_dim=64)  # fmt: skip
    return build_model(config)


def test_qlora_quantizes_every_expert_and_trains_the_adapters_alone() -> None:
    model = apply_lora(tiny_moe(), EVERY_LINEAR, rank=4, alpha=8, quantize_base=True)
    mark_only_adapters_trainable(model)
    blocks = moe_blocks(model)
    assert len(blocks) == 2
    experts = [getattr(e, n) for b in blocks for e in b.experts for n in EVERY_LINEAR[4:]]
    assert len(experts) == 2 * 4 * 3 and all(is_nf4(p.weight) for p in experts)
    assert not any(b.router.weight.requires_grad for b in blocks)  # the router stays frozen

    for name, param in adapter_params(model).items():  # lora_b starts at 0: move it off
        if "lora_b" in name:
            torch.nn.init.normal_(param, std=0.02)
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    model.train()
    logits = model(tokens)
    router = take_balance(moe_blocks(model))
    assert (
        router.expert_load.shape == (2, 4) and take_balance(moe_blocks(model)) is None
    )  # then cleared
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    (loss + router.aux_loss + router.z_loss).backward()
    grads = {n: p.grad for n, p in adapter_params(model).items()}
    expert_grads = [g for n, g in grads.items() if ".experts." in n]
    assert len(expert_grads) == 2 * 4 * 3 * 2
    assert all(g is not None and g.abs().max() > 0 for g in grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in grads)


def test_grouped_compute_runs_the_loop_for_experts_with_adapters() -> None:
    torch.manual_seed(0)
    loop = MoEFeedForward(16, 32, n_experts=4, top_k=2, norm_topk_prob=False)
    grouped = MoEFeedForward(16, 32, n_experts=4, top_k=2, norm_topk_prob=False, compute="grouped")
    grouped.load_state_dict(loop.state_dict())
    for block in (loop, grouped):
        apply_lora(block, ["gate_proj", "down_proj"], rank=2, alpha=4)
    torch.manual_seed(1)
    for name, param in loop.named_parameters():
        if "lora" in name:
            torch.nn.init.normal_(param)
            grouped.get_parameter(name).data.copy_(param)
    x = torch.randn(9, 16)
    torch.testing.assert_close(grouped(x), loop(x))
    # and the adapters move the output: the grouped path did not ignore them
    plain = MoEFeedForward(16, 32, n_experts=4, top_k=2, norm_topk_prob=False)
    plain.load_state_dict({k: v for k, v in loop.state_dict().items() if "lora" not in k})
    assert (plain(x) - loop(x)).abs().max() > 1e-3


def test_router_losses_keep_their_gradients_under_activation_checkpointing() -> None:
    """A checkpointed block recomputes its forward in backward; the router losses recorded in
    the first forward still carry the same gradients to the router."""
    from tt_recipes.training import enable_activation_checkpointing

    def gradients(checkpointed: bool) -> dict[str, torch.Tensor]:
        model = tiny_moe()
        if checkpointed:
            enable_activation_checkpointing(model)
        tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
        logits = model(tokens)
        router = take_balance(moe_blocks(model))
        (logits.logsumexp(-1).mean() + router.aux_loss + 0.1 * router.z_loss).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain, recomputed = gradients(False), gradients(True)
    assert plain["layers.0.mlp.router.weight"].abs().max() > 0
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0, msg=name)
