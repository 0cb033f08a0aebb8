"""Small recipe helpers with behaviour of their own."""

from __future__ import annotations

import pytest
import torch
import tt_models
from tt_peft import apply_lora
from tt_recipes.training import check_nf4_shardable


def test_nf4_weights_too_small_to_split_across_ranks_name_the_layer() -> None:
    torch.manual_seed(0)
    model = tt_models.transformer_decoder(
        vocab_size=128, dim=128, n_layers=1, n_heads=4, hidden_dim=256
    )
    apply_lora(model, ["q_proj"], rank=4, alpha=8, quantize_base=True)
    check_nf4_shardable(model, 1)
    with pytest.raises(ValueError, match=r"NF4 weight of layers.0.attn.q_proj \(128, 128\)"):
        check_nf4_shardable(model, 2)


def test_fused_optimizer_default_only_where_torch_has_the_kernel() -> None:
    from omegaconf import OmegaConf
    from tt_recipes.trainer import fused_optimizer_default

    params = [torch.nn.Parameter(torch.zeros(3))]

    def chosen(**node: object) -> dict:
        return fused_optimizer_default(OmegaConf.create(node), params)

    assert chosen(_component_="torch.optim.AdamW", lr=1e-3) == {"fused": True}
    assert chosen(_component_="torch.optim.SGD", lr=1e-3) == {"fused": True}
    assert chosen(_component_="torch.optim.AdamW", lr=1e-3, foreach=True) == {}  # user's choice
    assert chosen(_component_="torch.optim.AdamW", lr=1e-3, fused=False) == {}
    assert chosen(_component_="torch.optim.RMSprop", lr=1e-3) == {}  # no fused kernel
    assert chosen(_component_="torchao.optim.AdamW8bit", lr=1e-3) == {}  # not torch's


def test_activation_checkpointing_of_every_block_keeps_the_gradients() -> None:
    """enable_activation_checkpointing: true recomputes each block in backward; the gradients
    are those of the plain model (it once failed on every recipe: the block predicate took
    one argument where tt_dist passes the name too)."""
    from tt_recipes.training import enable_activation_checkpointing

    def gradients(checkpointed: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = tt_models.transformer_decoder(
            vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64
        )
        if checkpointed:
            enable_activation_checkpointing(model)
        tokens = torch.randint(0, 64, (2, 9))
        model(tokens).float().logsumexp(-1).mean().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain, recomputed = gradients(False), gradients(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0, msg=name)
