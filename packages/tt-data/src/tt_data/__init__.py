"""tt_data: tokenizers, chat formats, datasets, packing and collators.

Turns raw text and conversations into training batches. Depends on torch, datasets,
sentencepiece, tiktoken, tokenizers and jinja2, never on another tt package.
"""
