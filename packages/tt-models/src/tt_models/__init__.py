"""tt_models: decoder-only transformer definitions, KV-cache and generation.

Depends on torch only. Model families (Llama 2/3/3.1/3.2/3.3 and more) are built by one
component builder, ``transformer_decoder``, from plain arguments; ``from_hf_config`` builds the
right architecture from a transformers ``config.json`` dict.
"""
