"""Attention masks and positions for packed and padded batches (True = may attend)."""

from __future__ import annotations

import torch


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Causal attention restricted to each document of packed rows.

    Args:
        document_ids: ``[b, s]`` integers; tokens with the same id in a row belong to one
            document (documents are contiguous).

    Returns:
        Boolean ``[b, s, s]``: query ``i`` may attend to key ``j`` if ``j <= i`` and both tokens
        belong to the same document.

    Example: ``block_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))`` lets tokens 2..4 see only
    each other. Pair it with ``input_pos`` restarting at 0 for each document.
    """
    if document_ids.dim() != 2:
        raise ValueError(
            f"block_causal_mask: document_ids must be [batch, seq_len], "
            f"got shape {tuple(document_ids.shape)}"
        )
    s = document_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=document_ids.device).tril()
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    return same_document & causal


def padded_mask_and_positions(padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and positions for a padded batch (left or right padding), without a KV-cache.

    Args:
        padding_mask: boolean ``[b, s]``, True at real tokens (a tokenizer's ``attention_mask``).

    Returns:
        ``(mask, input_pos)``: ``mask`` ``[b, s, s]`` is causal over real tokens; a padding query
        attends only to itself so that no row is empty. ``input_pos`` ``[b, s]`` counts real
        tokens from 0 (so a left-padded row gets the positions it would have unpadded); padding
        gets position 0. Logits at padding positions are meaningless.
    """
    if padding_mask.dim() != 2 or padding_mask.dtype != torch.bool:
        raise ValueError(
            f"padded_mask_and_positions: padding_mask must be a bool [batch, seq_len] tensor, "
            f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    s = padding_mask.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=padding_mask.device).tril()
    itself = torch.eye(s, dtype=torch.bool, device=padding_mask.device)
    mask = (causal & padding_mask[:, None, :]) | itself
    input_pos = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)
    return mask, input_pos
