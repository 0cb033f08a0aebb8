"""Model builders: published sizes, meta-device construction, dtype, state-dict keys."""

from __future__ import annotations

import pytest
import torch
import tt_models
from tt_models import DecoderConfig, build_model, llama3_1_8b, llama3_2_1b


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_exact_parameter_counts_on_meta():
    assert _n_params(llama3_2_1b(device="meta")) == 1_235_814_400
    assert _n_params(llama3_1_8b(device="meta")) == 8_030_261_248


# Published sizes in billions, rounded to the precision the model cards give.
PUBLISHED = {
    "llama2_7b": 6.74,
    "llama2_13b": 13.02,
    "llama2_70b": 68.98,
    "llama3_8b": 8.03,
    "llama3_70b": 70.55,
    "llama3_1_8b": 8.03,
    "llama3_1_70b": 70.55,
    "llama3_1_405b": 405.85,
    "llama3_2_1b": 1.24,
    "llama3_2_3b": 3.21,
    "llama3_3_70b": 70.55,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_builder_matches_its_published_size_without_allocating(name):
    model = getattr(tt_models, name)(device="meta", dtype=torch.bfloat16)
    params = list(model.parameters())
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in params)
    assert sum(p.numel() for p in params) / 1e9 == pytest.approx(PUBLISHED[name], abs=0.01)


def test_builder_numbers_of_llama3_2_1b():
    cfg = llama3_2_1b(device="meta").config
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (
        128_256,
        2048,
        16,
        32,
        8,
    )
    assert (cfg.hidden_dim, cfg.head_dim, cfg.rope_base, cfg.tie_embeddings) == (
        8192,
        64,
        500_000.0,
        True,
    )
    assert cfg.rope_scaling["factor"] == 32.0 and cfg.max_seq_len == 131_072


def test_state_dict_keys_follow_the_contract():
    cfg = DecoderConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=24, attn_bias=True)
    keys = set(build_model(cfg, device="meta").state_dict())
    layer = ["attn_norm.weight", "mlp_norm.weight"]
    layer += [f"attn.{p}_proj.{t}" for p in "qkvo" for t in ("weight", "bias")]
    layer += [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    assert keys == expected | {f"layers.0.{name}" for name in layer}


def test_build_model_dtype_and_default_dtype_restored():
    cfg = DecoderConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=24)
    model = build_model(cfg, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert model(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype=torch.int64 must be a floating-point dtype"):
        build_model(cfg, dtype=torch.int64)


def test_meta_model_materialises_and_runs():
    cfg = DecoderConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=24)
    torch.manual_seed(0)
    reference = build_model(cfg)
    model = build_model(cfg, device="meta").to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(tokens), reference(tokens), rtol=0, atol=0)
