"""Post-training quantization of a checkpoint with torchao (weights of every linear layer).

The output directory loads with ``tt_recipes.from_pretrained``, so ``generate`` and
``evaluate`` run the quantized model: point their ``checkpoint_dir`` at it.

    tt run quantize --config tiny/quantize
    tt run evaluate --config tiny/eval checkpoint_dir=./outputs/tiny_int8
"""

from __future__ import annotations

import logging
import time

import tt_dist
from omegaconf import DictConfig, OmegaConf

from tt_recipes import console, training
from tt_recipes.config import DEVICE_KEY, DTYPES, LOG_LEVEL_KEY, ConfigKey, RecipeSpec
from tt_recipes.pretrained import from_pretrained
from tt_recipes.quantization import model_bytes, quantize, restorable_config, save_quantized

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="quantize",
    description="Quantize a checkpoint's linear layers with torchao (int8, int4 weights, ...).",
    keys={
        "checkpoint_dir": ConfigKey(str, required=True, doc="HF model dir or a tt run's output"),
        "quantizer": ConfigKey(
            component=True,
            required=True,
            doc="a torchao scheme tt can restore, e.g. torchao.quantization.Int8WeightOnlyConfig",
        ),
        "output_dir": ConfigKey(str, required=True, doc="where the quantized model goes"),
        "dtype": ConfigKey(
            str, default="fp32", choices=DTYPES, doc="of the layers that stay unquantized"
        ),
        "device": DEVICE_KEY,
        "log_level": LOG_LEVEL_KEY,
    },
)


def recipe_main(cfg: DictConfig) -> None:
    console.setup_logging(cfg.log_level)
    quantizer = OmegaConf.to_container(cfg.quantizer, resolve=True)
    scheme = restorable_config(quantizer)  # a wrong scheme fails before the model loads
    source = training.resolve_checkpoint_dir(cfg.checkpoint_dir)
    model = from_pretrained(source, dtype=cfg.dtype, device=tt_dist.get_device(cfg.device))
    before = model_bytes(model)
    start = time.perf_counter()
    layers = quantize(model, scheme)
    seconds = time.perf_counter() - start
    after = model_bytes(model)
    log.info(
        f"Quantized {layers} linear layers with {type(scheme).__name__} in {seconds:.1f} s: "
        f"{before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB ({before / after:.2f}x smaller)"
    )
    save_quantized(model, cfg.output_dir, quantizer=quantizer, source_dir=source)
    log.info(f"Saved {cfg.output_dir} (load it with tt_recipes.from_pretrained)")
