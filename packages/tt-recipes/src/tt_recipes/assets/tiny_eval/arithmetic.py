"""Rows for the tiny arithmetic tasks: held-out sums from tt_data's generator (no data file)."""

import datasets
from tt_data.datasets.synthetic import arithmetic_rows


def test_split(n: int = 200, max_operand: int = 20, **_) -> datasets.DatasetDict:
    """``n`` questions "What is a + b?" with the answer and a near miss. They come from the
    validation stream with a seed no bundled config uses, so training never saw this list."""
    rows = arithmetic_rows(n, seed=7, split="validation", max_operand=max_operand)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
