"""tt_recipes: the config system and the recipes that compose the tt packages.

Recipes (full_finetune, lora_finetune, generate, ...) are single readable files; shared
pieces (losses, schedulers, metric loggers, checkpoint helpers) live in modules here.
"""
