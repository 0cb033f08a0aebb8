"""Dataset builders: generic, named (hub defaults) and synthetic."""

from tt_data.datasets.base import (
    DataError,
    PreferenceTransform,
    SFTTransform,
    StreamingTokenizedDataset,
    TextTransform,
    TokenizedDataset,
    chat_dataset,
    instruct_dataset,
    load_rows,
    preference_dataset,
    text_completion_dataset,
)
from tt_data.datasets.named import (
    alpaca,
    alpaca_cleaned,
    cnn_dailymail,
    grammar,
    gsm8k,
    hh_rlhf_helpful,
    samsum,
    slimorca,
    stack_exchange_paired,
    wikitext,
)
from tt_data.datasets.synthetic import (
    arithmetic_rows,
    synthetic_arithmetic,
    synthetic_arithmetic_preference,
)

__all__ = [
    "DataError",
    "PreferenceTransform",
    "SFTTransform",
    "StreamingTokenizedDataset",
    "TextTransform",
    "TokenizedDataset",
    "alpaca",
    "alpaca_cleaned",
    "arithmetic_rows",
    "chat_dataset",
    "cnn_dailymail",
    "grammar",
    "gsm8k",
    "hh_rlhf_helpful",
    "instruct_dataset",
    "load_rows",
    "preference_dataset",
    "samsum",
    "slimorca",
    "stack_exchange_paired",
    "synthetic_arithmetic",
    "synthetic_arithmetic_preference",
    "text_completion_dataset",
    "wikitext",
]
