"""tt_recipes: the config system and the recipes that compose the tt packages.

Recipes (full_finetune, lora_finetune, dpo, generate, ...) are single readable files in
``tt_recipes.recipes`` that import library modules only, never each other. The library
modules here say what they hold: ``trainer`` (the run's state and step loop),
``checkpointing`` (where checkpoints go, saving, resuming), ``adapters`` (LoRA and friends),
``losses``, ``lr_schedulers``, ``metric_logging``, ``training`` (model, data and sharding
set-up), ``quantization``, ``evaluation``, ``config``. ``from_pretrained`` / ``save_pretrained`` load and write a
Hugging Face model directory as a tt model.
"""

from typing import Any

__all__ = ["from_pretrained", "save_pretrained"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `tt ls` / `tt cat` should not pay for importing torch.
    if name in __all__:
        from tt_recipes import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'tt_recipes' has no attribute {name!r}")
