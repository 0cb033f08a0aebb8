"""Packing several documents per row without cross-contamination.

A packed row has exactly ``max_seq_len`` positions::

    {"tokens", "labels", "input_pos", "document_ids"}   # each list[int] of length max_seq_len

``input_pos`` restarts at 0 for every document; ``document_ids`` numbers the documents of the
row from 0 and is -1 on padding (tokens = pad_id, labels = -100). The model turns
document ids into the boolean mask (``tt_models.block_causal_mask``, True = may attend) so no
token attends across documents, and each document's first label is masked so that no token is
trained to predict the next document: a packed row trains exactly the targets of its
documents trained one by one. Documents are never split: one longer than ``max_seq_len`` is
truncated (keeping its last token, normally eos) and counted in ``num_truncated``.

Preference samples are packed per pair: chosen and rejected go into the same row as
consecutive documents, so document ``2p`` is the chosen and ``2p + 1`` the rejected answer of
the row's ``p``-th pair (a DPO loss sums log-probs per document id).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tt_data.labels import IGNORE_INDEX

logger = logging.getLogger(__name__)
PREFERENCE_KEYS = ("chosen_tokens", "chosen_labels", "rejected_tokens", "rejected_labels")
Document = tuple[list[int], list[int]]  # (tokens, labels)


def _cut(doc: Document, length: int) -> Document:
    """Keep ``length`` tokens, the last one being the document's final token (eos)."""
    tokens, labels = doc
    if len(tokens) <= length:
        return doc
    return tokens[: length - 1] + tokens[-1:], labels[: length - 1] + labels[-1:]


def sample_documents(sample: dict[str, list[int]], max_seq_len: int) -> tuple[list[Document], bool]:
    """The documents one sample contributes (1 for SFT, 2 for a pair), fitted into a row.

    Returns the documents and whether they had to be truncated.
    """
    if all(k in sample for k in PREFERENCE_KEYS):
        chosen = (sample["chosen_tokens"], sample["chosen_labels"])
        rejected = (sample["rejected_tokens"], sample["rejected_labels"])
        if len(chosen[0]) + len(rejected[0]) <= max_seq_len:
            return [chosen, rejected], False
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len={max_seq_len} cannot hold a chosen/rejected pair")
        # Give each side at least half the row, and the short side's unused half to the other.
        chosen_len = max(max_seq_len - len(rejected[0]), max_seq_len // 2)
        chosen = _cut(chosen, chosen_len)
        return [chosen, _cut(rejected, max_seq_len - len(chosen[0]))], True
    if "tokens" not in sample or "labels" not in sample:
        raise KeyError(
            f"cannot pack a sample with keys {sorted(sample)}; expected 'tokens' and 'labels' "
            f"(SFT/text) or {list(PREFERENCE_KEYS)} (preference)"
        )
    doc = (sample["tokens"], sample["labels"])
    return [_cut(doc, max_seq_len)], len(doc[0]) > max_seq_len


def _build_row(docs: list[Document], max_seq_len: int, pad_id: int) -> dict[str, list[int]]:
    row: dict[str, list[int]] = {"tokens": [], "labels": [], "input_pos": [], "document_ids": []}
    for doc_id, (tokens, labels) in enumerate(docs):
        row["tokens"] += tokens
        # Each position is trained on the next label, so a document's first label is never
        # its own target; in a row it would be the previous document's last one (eos -> bos,
        # across documents), a target unpacked training never has. It is masked.
        row["labels"] += [IGNORE_INDEX, *labels[1:]] if labels else []
        row["input_pos"] += list(range(len(tokens)))
        row["document_ids"] += [doc_id] * len(tokens)
    padding = max_seq_len - len(row["tokens"])
    row["tokens"] += [pad_id] * padding
    row["labels"] += [IGNORE_INDEX] * padding
    row["input_pos"] += list(range(padding))
    row["document_ids"] += [-1] * padding
    return row


class PackStats:
    """Counts truncated samples, logging the first one only."""

    def __init__(self) -> None:
        self.num_truncated = 0

    def record_truncation(self, index: int, max_seq_len: int) -> None:
        if self.num_truncated == 0:
            logger.warning(
                "sample %d is longer than max_seq_len=%d and was truncated; further "
                "truncations are counted in num_truncated instead of being logged",
                index,
                max_seq_len,
            )
        self.num_truncated += 1


def iter_packs(
    samples: Iterable[dict[str, list[int]]],
    max_seq_len: int,
    pad_id: int = 0,
    stats: PackStats | None = None,
    start: int = 0,
) -> Iterator[tuple[dict[str, list[int]], int]]:
    """Greedily pack samples in order; yields ``(row, index of the first unpacked sample)``.

    Holds one row's documents at a time. ``start`` is the index of the first sample given,
    so the yielded positions count from the beginning of the source.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    stats = stats or PackStats()
    docs: list[Document] = []
    used = 0
    next_index = start
    for index, sample in enumerate(samples, start=start):
        new_docs, truncated = sample_documents(sample, max_seq_len)
        if truncated:
            stats.record_truncation(index, max_seq_len)
        length = sum(len(t) for t, _ in new_docs)
        if docs and used + length > max_seq_len:
            yield _build_row(docs, max_seq_len, pad_id), index
            docs, used = [], 0
        docs += new_docs
        used += length
        next_index = index + 1
    if docs:
        yield _build_row(docs, max_seq_len, pad_id), next_index


class PackedDataset(torch.utils.data.Dataset):
    """Map-style packed rows, built by one pass over a map-style dataset at construction."""

    def __init__(
        self, dataset: Iterable[dict[str, list[int]]], max_seq_len: int, pad_id: int = 0
    ) -> None:
        self.max_seq_len = max_seq_len
        self.stats = PackStats()
        samples = (
            (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else dataset
        )
        self.rows = [row for row, _ in iter_packs(samples, max_seq_len, pad_id, self.stats)]
        if not self.rows:
            raise ValueError("PackedDataset got an empty dataset; there is nothing to pack")

    @property
    def num_truncated(self) -> int:
        """Samples that were longer than ``max_seq_len``."""
        return self.stats.num_truncated

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


class IterablePackedDataset(torch.utils.data.IterableDataset):
    """Packs on the fly from an iterable source with bounded memory, resumable exactly.

    ``state_dict()`` taken after receiving ``k`` rows records the source position where row
    ``k + 1`` starts; after ``load_state_dict`` a new iteration yields exactly the remaining
    rows of the epoch. The source is re-iterated (and the consumed prefix skipped: cheaply
    when it has ``iter_from(n)``, as streaming tt datasets do). Iterate it in the main process
    (``num_workers=0``) so the position is the one the training loop saw.
    """

    def __init__(
        self, source: Iterable[dict[str, list[int]]], max_seq_len: int, pad_id: int = 0
    ) -> None:
        self.source = source
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.stats = PackStats()
        self.position = 0
        self.epoch = 0

    @property
    def num_truncated(self) -> int:
        """Samples seen so far that were longer than ``max_seq_len``."""
        return self.stats.num_truncated

    def _samples_from(self, start: int) -> Iterator[dict[str, list[int]]]:
        if hasattr(self.source, "iter_from"):
            return self.source.iter_from(start)
        return itertools.islice(iter(self.source), start, None)

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        start = self.position
        samples = self._samples_from(start)
        for row, next_position in iter_packs(
            samples, self.max_seq_len, self.pad_id, self.stats, start
        ):
            self.position = next_position
            yield row
        self.position = 0
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """Where the next row starts in the source, and the epoch."""
        return {"position": self.position, "epoch": self.epoch, "max_seq_len": self.max_seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()``; the pack length must match."""
        missing = {"position", "epoch", "max_seq_len"} - set(state)
        if missing:
            raise KeyError(f"packer state is missing {sorted(missing)}; got keys {sorted(state)}")
        if state["max_seq_len"] != self.max_seq_len:
            raise ValueError(
                f"packer state was saved with max_seq_len={state['max_seq_len']} but this packer "
                f"uses max_seq_len={self.max_seq_len}; rows would not line up on resume"
            )
        self.position, self.epoch = int(state["position"]), int(state["epoch"])
