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
