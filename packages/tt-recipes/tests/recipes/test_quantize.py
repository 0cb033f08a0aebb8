"""The quantize recipe on the tiny model trained by tiny/full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from recipe_testing import run_recipe
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs


def test_quantize_writes_a_model_that_from_pretrained_restores(
    tiny_full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "int8"
    run_recipe(
        "quantize", "tiny/quantize", [f"checkpoint_dir={tiny_full_run}", f"output_dir={out}"]
    )
    assert "3.25 MiB -> 1.03 MiB (3.16x smaller)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["tt_quantization"] == {"_component_": "torchao.quantization.Int8WeightOnlyConfig"}
    tokens = torch.randint(0, 456, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = from_pretrained(complete_step_dirs(tiny_full_run)[-1])(tokens)
        got = from_pretrained(out)(tokens)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_a_quantizer_tt_cannot_restore_is_refused_before_loading(tmp_path: Path):
    with pytest.raises(ValueError, match=r"scheme 'torch.nn.Identity' is not one tt saves"):
        run_recipe(
            "quantize",
            "tiny/quantize",
            [f"checkpoint_dir={tmp_path / 'missing'}", "quantizer._component_=torch.nn.Identity"],
        )
