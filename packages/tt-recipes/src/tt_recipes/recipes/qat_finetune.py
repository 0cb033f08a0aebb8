"""Quantization-aware fine-tuning: supervised fine-tuning of a model whose linear layers
fake-quantize their weights (torchao QAT), so training adapts the weights to the rounding of
the quantization they will get. Each checkpoint holds the float weights (HF format) like
``full_finetune``'s; the final one also holds ``quantized/``, the model quantized for real,
which ``tt_recipes.from_pretrained`` (``generate``, ``evaluate``) loads.

    tt run qat_finetune --config tiny/qat
    tt run evaluate --config tiny/eval checkpoint_dir=./outputs/tiny_qat/step_N/quantized
"""

from __future__ import annotations

import logging

import torch
import tt_dist
from omegaconf import DictConfig, OmegaConf

from tt_recipes import checkpointing, trainer
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.pretrained import from_pretrained
from tt_recipes.quantization import model_bytes, quantize, restorable_config, save_quantized

log = logging.getLogger("tt")

QUANTIZED_DIR = "quantized"

SPEC = RecipeSpec(
    name="qat_finetune",
    description="Quantization-aware fine-tuning (torchao fake quantization) on 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "quantizer": ConfigKey(
            component=True,
            required=True,
            doc="the quantization to train for, e.g. tt_recipes.quantization.intx_weight_config",
        ),
    },
)


def recipe_main(cfg: DictConfig) -> None:
    restorable_config(quantizer_of(cfg))  # a wrong quantizer fails before anything loads
    with trainer.distributed(cfg) as dist:
        plan = trainer.ModelPlan(prepare=fake_quantize)
        run = trainer.setup(cfg, dist, objective=trainer.SFT, plan=plan)
        trainer.train(run)
        if dist.rank == 0:
            save_quantized_final(cfg)
        tt_dist.barrier()


def quantizer_of(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.quantizer, resolve=True)


def fake_quantize(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """Swap every linear layer for torchao's fake-quantized one (same parameter names)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    base = restorable_config(quantizer_of(cfg))
    quantize_(model, QATConfig(base, step="prepare"))
    log.info(f"Quantization-aware training for {type(base).__name__}")
    return model


def save_quantized_final(cfg: DictConfig) -> None:
    """Quantize the final checkpoint's trained weights for real (what torchao's QAT "convert"
    step does: the fake quantization becomes actual integer weights) into ``quantized/``."""
    final = checkpointing.latest_step_dir(checkpointing.checkpoint_root(cfg))
    model = from_pretrained(final, dtype=cfg.dtype)
    before = model_bytes(model)
    quantize(model, quantizer_of(cfg))
    save_quantized(model, final / QUANTIZED_DIR, quantizer=quantizer_of(cfg), source_dir=final)
    log.info(
        f"Saved the quantized model {final / QUANTIZED_DIR}: "
        f"{before / 2**20:.2f} MiB -> {model_bytes(model) / 2**20:.2f} MiB"
    )
