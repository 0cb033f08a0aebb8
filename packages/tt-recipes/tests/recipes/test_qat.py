"""qat_finetune from the tiny model trained by tiny/full."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipe_testing import losses, run_recipe
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs


def test_qat_trains_and_saves_the_quantized_model_it_trained(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    run_recipe(
        "qat_finetune",
        "tiny/qat",
        [
            f"output_dir={tmp_path}",
            f"checkpointer.checkpoint_dir={tiny_full_run}",
            "dataset.n=640",
            "~dataset_val",
            "run_val_every_n_steps=null",
            "save_every_n_steps=null",
            "log_every_n_steps=1",
        ],
    )
    history = losses(tmp_path / "logs")
    assert history[20] < history[1]
    (final,) = complete_step_dirs(tmp_path)
    quantized = from_pretrained(final / "quantized")
    assert "Intx" in type(quantized.layers[0].mlp.up_proj.weight).__name__

    # the quantized model computes what the fake-quantized model computed during training
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from tt_recipes.quantization import intx_weight_config

    fake = from_pretrained(final)
    quantize_(fake, QATConfig(intx_weight_config(bits=2, group_size=32), step="prepare"))
    tokens = torch.randint(0, 456, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(quantized(tokens), fake(tokens), rtol=1e-4, atol=1e-4)


def test_a_quantizer_tt_cannot_restore_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scheme 'torch.nn.Identity' is not one tt saves"):
        run_recipe(
            "qat_finetune",
            "tiny/qat",
            [f"output_dir={tmp_path}", "quantizer=null", "quantizer._component_=torch.nn.Identity"],
        )
