"""Packed rows with a block-causal mask and restarted positions equal separate documents."""

from __future__ import annotations

import pytest
import torch
from tt_models import block_causal_mask, padded_mask_and_positions
from tt_models_testing import tiny_tt_model


def test_block_causal_mask_by_hand():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0], expected)


def test_padded_mask_and_positions_by_hand():
    mask, input_pos = padded_mask_and_positions(torch.tensor([[False, True, True]]))
    assert torch.equal(input_pos, torch.tensor([[0, 0, 1]]))
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0], expected)


def test_packed_documents_match_running_each_alone():
    model = tiny_tt_model()
    gen = torch.Generator().manual_seed(0)
    lengths = [[5, 9, 2], [16]]
    documents = [[torch.randint(0, 256, (n,), generator=gen) for n in row] for row in lengths]
    tokens = torch.stack([torch.cat(row) for row in documents])  # [2, 16]
    document_ids = torch.tensor([sum(([d] * n for d, n in enumerate(row)), []) for row in lengths])
    input_pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    with torch.no_grad():
        packed = model(tokens, mask=block_causal_mask(document_ids), input_pos=input_pos)
        for row, docs in enumerate(documents):
            start = 0
            for doc in docs:
                alone = model(doc[None])[0]
                assert (packed[row, start : start + len(doc)] - alone).abs().max() <= 1e-5
                start += len(doc)
        # Without the mask and restarted positions the later documents do change.
        assert (model(tokens)[0, 5:14] - packed[0, 5:14]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: block_causal_mask(torch.zeros(4)), r"document_ids must be \[batch, seq_len\]"),
        (
            lambda: padded_mask_and_positions(torch.ones(2, 3)),
            r"padding_mask must be a bool \[batch, seq_len\] tensor, got torch.float32",
        ),
    ],
)
def test_mask_helpers_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask=torch.ones(2, 4, 4)), r"mask must be a bool tensor of shape \(2, 4, 4\)"),
        (dict(mask=torch.ones(2, 4, 5, dtype=torch.bool)), r"shape \(2, 4, 4\) .*got torch.bool"),
        (dict(input_pos=torch.zeros(2, 3).long()), r"input_pos must be an integer tensor of shape"),
        (dict(input_pos=torch.zeros(2, 4)), r"input_pos .* got torch.float32"),
    ],
)
def test_forward_rejects_bad_mask_and_positions(kwargs, message):
    model = tiny_tt_model()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(2, 4, dtype=torch.long), **kwargs)


def test_forward_rejects_1d_tokens():
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq_len\], got shape \(4,\)"):
        tiny_tt_model()(torch.zeros(4, dtype=torch.long))
