"""LoRA / DoRA / QLoRA / QDoRA fine-tuning: supervised fine-tuning of adapters only.

The base weights are frozen (NF4-quantized with ``peft.quantize_base: true``); only the
adapters train. Every checkpoint holds the merged model in HF format (transformers loads it
as a plain model), the adapter in PEFT format under ``adapter/`` (``peft`` loads it onto the
base model) and the training state (the adapters and their optimizer state).

    tt run lora_finetune --config tiny/lora
    tt run lora_finetune --config llama3_2/1B_qlora checkpointer.checkpoint_dir=...
"""

from __future__ import annotations

from omegaconf import DictConfig

from tt_recipes import adapters, trainer
from tt_recipes.config import RecipeSpec

SPEC = RecipeSpec(
    name="lora_finetune",
    description="LoRA/DoRA/QLoRA/QDoRA fine-tuning; saves a merged HF model and a PEFT adapter.",
    keys={
        **trainer.TRAINING_KEYS,
        "peft": adapters.REQUIRED_PEFT,
        "save_adapter_weights_only": adapters.SAVE_ADAPTER_ONLY,
    },
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        run = trainer.setup(cfg, dist, objective=trainer.SFT, plan=adapters.model_plan(cfg))
        trainer.train(run)
