import pytest
import tt_data
from hypothesis import given, settings
from hypothesis import strategies as st
from tt_data.packing import IterablePackedDataset, PackedDataset, iter_packs

IGNORE = -100


def sft_samples(lengths, masked_prefix=2):
    """Document d holds tokens 1000*d + i so any mixing is visible; a prefix is masked."""
    out = []
    for d, n in enumerate(lengths):
        tokens = [1000 * d + i for i in range(n)]
        labels = [IGNORE if i < masked_prefix else t for i, t in enumerate(tokens)]
        out.append({"tokens": tokens, "labels": labels})
    return out


def documents_of(row):
    docs = {}
    for tok, lab, pos, doc in zip(
        row["tokens"], row["labels"], row["input_pos"], row["document_ids"]
    ):
        if doc >= 0:
            docs.setdefault(doc, []).append((tok, lab, pos))
    return [docs[k] for k in sorted(docs)]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    max_seq_len=st.integers(8, 64),
)
def test_packing_never_splits_or_merges_documents(lengths, max_seq_len):
    samples = sft_samples(lengths)
    packed = PackedDataset(samples, max_seq_len=max_seq_len, pad_id=7)
    unpacked = []
    for row in packed:
        assert all(len(v) == max_seq_len for v in row.values())
        for doc in documents_of(row):
            assert [p for _, _, p in doc] == list(range(len(doc)))
            assert len({t // 1000 for t, _, _ in doc}) == 1  # one source document per id
            unpacked.append(([t for t, _, _ in doc], [lab for _, lab, _ in doc]))
        padding = [i for i, d in enumerate(row["document_ids"]) if d < 0]
        assert all(row["tokens"][i] == 7 and row["labels"][i] == IGNORE for i in padding)
    expected = [(s["tokens"], s["labels"]) for s in samples]
    expected = [(t[: max_seq_len - 1] + t[-1:], lab[: max_seq_len - 1] + lab[-1:])
                if len(t) > max_seq_len else (t, lab) for t, lab in expected]  # fmt: skip
    assert unpacked == expected  # same documents, same order, nothing split or merged
    assert packed.num_truncated == sum(n > max_seq_len for n in lengths)
    trained = sum(lab != IGNORE for row in packed for lab in row["labels"])
    assert trained == sum(x != IGNORE for _, labels in expected for x in labels)


def shifted(labels):
    """The targets training takes from ``labels``: position i learns label i + 1."""
    return labels[1:] + [IGNORE]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    masked_prefix=st.integers(0, 3),
)
def test_packed_rows_train_exactly_the_targets_of_their_documents(lengths, masked_prefix):
    """No position learns the next document's first token: (position, target) pairs of the
    packed rows are those of the documents trained one by one (labels == tokens included)."""
    samples = sft_samples(lengths, masked_prefix)
    unpacked = [(t, target) for s in samples
                for t, target in zip(s["tokens"], shifted(s["labels"])) if target != IGNORE]  # fmt: skip
    packed = [(t, target) for row in PackedDataset(samples, max_seq_len=64)
              for t, target in zip(row["tokens"], shifted(row["labels"])) if target != IGNORE]  # fmt: skip
    assert packed == unpacked


@settings(max_examples=30, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=15),
    max_seq_len=st.integers(16, 48),
)
def test_preference_pairs_pack_together(pairs, max_seq_len):
    samples = []
    for p, (c, r) in enumerate(pairs):
        (chosen,), (rejected,) = sft_samples([c]), sft_samples([r])
        samples.append({"chosen_tokens": [2000 * p + t for t in chosen["tokens"]],
                        "chosen_labels": chosen["labels"],
                        "rejected_tokens": [2000 * p + 1000 + t for t in rejected["tokens"]],
                        "rejected_labels": rejected["labels"]})  # fmt: skip
    packed = PackedDataset(samples, max_seq_len=max_seq_len)
    seen = []
    for row in packed:
        docs = documents_of(row)
        assert len(docs) % 2 == 0
        for chosen, rejected in zip(docs[0::2], docs[1::2]):
            pair, kind = divmod(chosen[0][0], 2000)
            assert kind < 1000 and rejected[0][0] // 2000 == pair and rejected[0][0] % 2000 >= 1000
            seen.append(pair)
    assert seen == list(range(len(pairs)))


def test_packed_batch_marks_documents_for_the_block_causal_mask():
    """The collator gives the model what it needs to keep documents apart: a document id per
    token (-1 on padding) and positions restarting at 0 for each document."""
    lengths = [5, 3, 6]
    row = PackedDataset(sft_samples(lengths), max_seq_len=16)[0]
    batch = tt_data.padded_collate_packed([row])
    assert set(batch) == {"tokens", "labels", "input_pos", "document_ids"}
    assert batch["document_ids"][0].tolist() == [0] * 5 + [1] * 3 + [2] * 6 + [-1] * 2
    assert batch["input_pos"][0, :14].tolist() == [*range(5), *range(3), *range(6)]
    assert batch["labels"][0, 14:].tolist() == [tt_data.IGNORE_INDEX] * 2


def test_iterable_packer_matches_eager_and_resumes_exactly():
    samples = sft_samples([5, 9, 3, 12, 7, 2, 8, 4, 11, 6])
    eager = list(PackedDataset(samples, max_seq_len=16))
    packer = IterablePackedDataset(samples, max_seq_len=16)
    assert list(packer) == eager
    for stop in range(1, len(eager)):
        packer = IterablePackedDataset(samples, max_seq_len=16)
        it = iter(packer)
        taken = [next(it) for _ in range(stop)]
        state = packer.state_dict()
        resumed = IterablePackedDataset(samples, max_seq_len=16)
        resumed.load_state_dict(state)
        assert taken + list(resumed) == eager
        assert list(resumed) == eager  # the next epoch starts from the beginning
        assert resumed.epoch == state["epoch"] + 2


def test_iterable_packer_streams_lazily_from_a_generator_source():
    pulled = []

    class Source:
        def __iter__(self):
            for s in sft_samples([4] * 1000):
                pulled.append(1)
                yield s

    it = iter(IterablePackedDataset(Source(), max_seq_len=16))
    next(it)
    assert len(pulled) == 5  # one row of 4 documents plus the one that did not fit


def test_iterable_packer_state_errors():
    packer = IterablePackedDataset([], max_seq_len=16)
    with pytest.raises(
        ValueError, match="saved with max_seq_len=32 but this packer uses max_seq_len=16"
    ):
        packer.load_state_dict({"position": 3, "epoch": 0, "max_seq_len": 32})
    with pytest.raises(KeyError, match=r"missing \['epoch'\]"):
        packer.load_state_dict({"position": 3, "max_seq_len": 16})


def test_pack_errors():
    with pytest.raises(KeyError, match=r"keys \['text'\].*'tokens' and 'labels'"):
        list(iter_packs([{"text": "x"}], 8))
    with pytest.raises(ValueError, match="empty dataset"):
        PackedDataset([], max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len must be >= 1, got 0"):
        list(iter_packs(sft_samples([3]), 0))


def test_padded_collate_sft_and_preference():
    batch = [{"tokens": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"tokens": [4], "labels": [4]}]
    out = tt_data.padded_collate_sft(batch, pad_id=9)
    assert out["tokens"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert out["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    pref = [{"chosen_tokens": [1, 2], "chosen_labels": [IGNORE, 2], "rejected_tokens": [1, 3, 3],
             "rejected_labels": [IGNORE, 3, 3]},
            {"chosen_tokens": [5], "chosen_labels": [5], "rejected_tokens": [6], "rejected_labels": [6]}]  # fmt: skip
    out = tt_data.padded_collate_preference(pref, pad_id=0)
    assert out["tokens"].tolist() == [[1, 2, 0], [5, 0, 0], [1, 3, 3], [6, 0, 0]]
    assert out["labels"][:, 0].tolist() == [IGNORE, 5, IGNORE, 6]
    with pytest.raises(ValueError, match="empty batch"):
        tt_data.padded_collate_sft([])
    with pytest.raises(ValueError, match=r"share one length, got lengths \[2, 3\]"):
        tt_data.padded_collate_packed(
            [
                {k: [0] * n for k in ("tokens", "labels", "input_pos", "document_ids")}
                for n in (2, 3)
            ]
        )


def test_trained_tokens_equal_packed_and_unpacked_on_real_data(llama3_tokenizer):
    ds = tt_data.synthetic_arithmetic(llama3_tokenizer, n=40)
    packed = PackedDataset(ds, max_seq_len=96, pad_id=llama3_tokenizer.pad_id)
    unpacked = tt_data.padded_collate_sft([ds[i] for i in range(len(ds))])
    batch = tt_data.padded_collate_packed(list(packed))
    assert (batch["labels"] != IGNORE).sum() == (unpacked["labels"] != IGNORE).sum()
    assert len(packed) < len(ds)
