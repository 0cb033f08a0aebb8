"""The recipes: one readable file per method, each with ``SPEC`` and ``recipe_main(cfg)``."""
