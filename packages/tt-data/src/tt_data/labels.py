"""The label value of positions that carry no loss (prompts, padding): PyTorch's
``cross_entropy`` default ``ignore_index``, shared with tt_recipes' losses (docs/CONTRACTS.md)."""

IGNORE_INDEX = -100
