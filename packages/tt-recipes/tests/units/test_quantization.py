"""torchao post-training quantization: close to the float model, several times smaller, and a
saved quantized directory comes back from from_pretrained with identical outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import tt_models
from tt_recipes import from_pretrained, save_pretrained
from tt_recipes.assets import asset_path
from tt_recipes.quantization import QUANTIZED_WEIGHTS, model_bytes, quantize, save_quantized

INT8_WEIGHTS = {"_component_": "torchao.quantization.Int8WeightOnlyConfig"}
INT8_DYNAMIC = {"_component_": "torchao.quantization.Int8DynamicActivationInt8WeightConfig"}


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = tt_models.transformer_decoder(
        vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512
    )
    out = tmp_path_factory.mktemp("float")
    save_pretrained(model, out, source_dir=asset_path("tiny_tokenizer"))
    return out


def int8_products_saturate() -> bool:
    """Whether oneDNN's int8 matmuls run without VNNI here (capped by ONEDNN_MAX_CPU_ISA, or a
    CPU without avx512_vnni/avx_vnni)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa in ("SSE41", "AVX", "AVX2", "AVX512_CORE"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


TOKENS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("quantizer", [INT8_WEIGHTS, INT8_DYNAMIC], ids=["int8wo", "int8dyn"])
def test_quantized_model_is_close_smaller_and_round_trips(
    float_dir: Path, tmp_path: Path, quantizer: dict
) -> None:
    model = from_pretrained(float_dir)
    with torch.no_grad():
        want = model(TOKENS)
    before = model_bytes(model)
    assert quantize(model, quantizer) == 2 * 7 + 1  # 7 linear layers per block + output
    with torch.no_grad():
        got = model(TOKENS)
    # int8 rounding moves logits by well under 5% of their range (measured ~1%). Without VNNI,
    # oneDNN sums pairs of int8 x int8 activation products in 16 bits, which saturate: 21% was
    # measured with ONEDNN_MAX_CPU_ISA=AVX2 (as on an AVX2-only CPU), weight-only int8 unaffected.
    bound = 0.3 if quantizer is INT8_DYNAMIC and int8_products_saturate() else 0.05
    assert (got - want).abs().max() < bound * want.abs().max()
    assert model_bytes(model) < 0.5 * before  # int8 linears; embeddings stay fp32

    save_quantized(model, tmp_path, quantizer=quantizer, source_dir=float_dir)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / QUANTIZED_WEIGHTS).is_file()
    loaded = from_pretrained(tmp_path)
    assert "Int8" in type(loaded.layers[0].attn.q_proj.weight).__name__
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), got, rtol=0, atol=0)


def test_a_quantized_directory_without_its_weights_is_named(float_dir: Path, tmp_path: Path):
    model = from_pretrained(float_dir)
    quantize(model, INT8_WEIGHTS)
    save_quantized(model, tmp_path, quantizer=INT8_WEIGHTS)
    (tmp_path / QUANTIZED_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="quantized_model.pt is missing"):
        from_pretrained(tmp_path)


def test_intx_config_builds_torchao_configs_from_plain_numbers() -> None:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from tt_recipes.quantization import intx_weight_config

    weights = intx_weight_config(bits=4, group_size=32)
    assert isinstance(weights, IntxWeightOnlyConfig) and weights.weight_dtype == torch.int4
    both = intx_weight_config(bits=2, int8_activations=True)
    assert isinstance(both, Int8DynamicActivationIntxWeightConfig)
    with pytest.raises(ValueError, match="quantizer.bits must be in 1..8, got 9"):
        intx_weight_config(bits=9)


def test_quantizing_qat_weights_equals_torchaos_convert(float_dir: Path) -> None:
    """qat_finetune saves the float weights and quantizes them with the base config; that is
    what torchao's QAT "convert" step produces from the fake-quantized model."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from tt_recipes.quantization import intx_weight_config

    spec = {"_component_": "tt_recipes.quantization.intx_weight_config", "bits": 4}
    converted = from_pretrained(float_dir)
    quantize_(converted, QATConfig(intx_weight_config(bits=4), step="prepare"))
    with torch.no_grad():
        fake = converted(TOKENS)
    quantize_(converted, QATConfig(intx_weight_config(bits=4), step="convert"))
    ours = from_pretrained(float_dir)
    quantize(ours, spec)
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), converted(TOKENS), rtol=0, atol=0)
        # and the fake-quantized model that training saw computes the same function
        torch.testing.assert_close(ours(TOKENS), fake, rtol=1e-4, atol=1e-4)
