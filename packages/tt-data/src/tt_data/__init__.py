"""tt_data: tokenizers, chat formats, datasets, packing and collators.

Turns raw text, conversations and images into training batches. Depends on torch, datasets,
sentencepiece, tiktoken, tokenizers, jinja2 and Pillow, never on another tt package.
"""

from tt_data import tokenizers
from tt_data.collate import (
    padded_collate_packed,
    padded_collate_preference,
    padded_collate_sft,
    padded_collate_vision,
)
from tt_data.datasets import (
    DataError,
    alpaca,
    alpaca_cleaned,
    chat_dataset,
    cnn_dailymail,
    draw_shape,
    grammar,
    gsm8k,
    gsm8k_prompts,
    hh_rlhf_helpful,
    instruct_dataset,
    multimodal_chat_dataset,
    preference_dataset,
    prompt_dataset,
    samsum,
    slimorca,
    stack_exchange_paired,
    synthetic_arithmetic,
    synthetic_arithmetic_preference,
    synthetic_arithmetic_prompts,
    synthetic_shapes,
    text_completion_dataset,
    the_cauldron,
    vqa_dataset,
    wikitext,
)
from tt_data.images import load_image
from tt_data.labels import IGNORE_INDEX
from tt_data.messages import ImagePart, Message, TextPart, apply_masking
from tt_data.packing import IterablePackedDataset, PackedDataset
from tt_data.tokenizers import ModelTokenizer, from_pretrained
from tt_data.vision import TiledImage, TiledImageTransform, supported_aspect_ratios

__all__ = [
    "DataError",
    "gsm8k_prompts",
    "prompt_dataset",
    "synthetic_arithmetic_prompts",
    "IGNORE_INDEX",
    "ImagePart",
    "IterablePackedDataset",
    "Message",
    "ModelTokenizer",
    "PackedDataset",
    "TextPart",
    "TiledImage",
    "TiledImageTransform",
    "alpaca",
    "alpaca_cleaned",
    "apply_masking",
    "chat_dataset",
    "cnn_dailymail",
    "from_pretrained",
    "grammar",
    "gsm8k",
    "hh_rlhf_helpful",
    "instruct_dataset",
    "load_image",
    "multimodal_chat_dataset",
    "padded_collate_packed",
    "padded_collate_preference",
    "padded_collate_sft",
    "padded_collate_vision",
    "preference_dataset",
    "samsum",
    "slimorca",
    "stack_exchange_paired",
    "supported_aspect_ratios",
    "synthetic_arithmetic",
    "synthetic_arithmetic_preference",
    "synthetic_shapes",
    "draw_shape",
    "text_completion_dataset",
    "tokenizers",
    "vqa_dataset",
    "the_cauldron",
    "wikitext",
]
