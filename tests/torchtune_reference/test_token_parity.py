"""The same rows through torchtune 0.6.1 and through tt, from the same torchtune config: the
token ids and labels are equal, for every dataset builder and train_on_input setting.

tt's side is what `tt run` does with the config: its dataset and tokenizer sections are read
as a torchtune config (tt_recipes.config) and instantiated from tt's components.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parents[1] / "torchtune"))
from checkpoints import WORDS, write_llama3_ranks, write_qwen2_tokenizer  # noqa: E402

try:
    from torchtune.config import instantiate as torchtune_instantiate
except ImportError as e:  # only `uv run nox -s torchtune-reference` has it
    pytest.fail(f"torchtune 0.6.1 cannot be imported here ({e}); run these tests with "
                "`uv run nox -s torchtune-reference`", pytrace=False)  # fmt: skip
from tt_recipes.config import instantiate  # noqa: E402
from tt_recipes.config._torchtune import from_torchtune  # noqa: E402
from tt_recipes.registry import load_recipe  # noqa: E402

ROWS = 24


def _text(i: int, k: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k))


def _rows(kind: str, i: int) -> dict:
    if kind == "alpaca":
        return {"instruction": _text(i, 6), "input": _text(i + 1, 3) if i % 2 else "",
                "output": _text(i + 2, 8)}  # fmt: skip
    if kind == "instruct":
        return {"question": _text(i, 6), "answer": _text(i + 2, 5)}
    if kind == "sharegpt":
        turns = [{"from": "system", "value": _text(i, 4)}] if i % 3 == 0 else []
        turns += [{"from": "human", "value": _text(i, 5)}, {"from": "gpt", "value": _text(i, 7)},
                  {"from": "human", "value": _text(i + 1, 3)}, {"from": "gpt", "value": _text(i, 2)}]  # fmt: skip
        return {"conversations": turns}
    if kind == "openai":
        return {"messages": [{"role": "user", "content": _text(i, 5)},
                             {"role": "assistant", "content": _text(i + 3, 6)}]}  # fmt: skip
    if kind == "pairs":
        return {"question": _text(i, 6), "response_j": _text(i + 1, 5), "response_k": _text(i, 4)}
    if kind == "pair_messages":
        prompt = [{"role": "user", "content": _text(i, 6)}]
        return {"chosen_conversations": [*prompt, {"role": "assistant", "content": _text(i, 5)}],
                "rejected_conversations": [*prompt, {"role": "assistant", "content": _text(i, 3)}]}  # fmt: skip
    if kind == "samsum":
        return {"dialogue": _text(i, 9), "summary": _text(i + 4, 4)}
    if kind == "grammar":
        return {"input": _text(i, 7), "output": _text(i + 5, 7)}
    if kind == "hh":
        prompt = [{"role": "user", "content": _text(i, 6)}]
        return {"chosen": [*prompt, {"role": "assistant", "content": _text(i, 5)}],
                "rejected": [*prompt, {"role": "assistant", "content": _text(i + 1, 3)}]}  # fmt: skip
    if kind == "text":
        return {"text": _text(i, 20)}
    raise ValueError(kind)


# (torchtune builder, its arguments, the rows' schema)
CASES = {
    "alpaca": ("torchtune.datasets.alpaca_dataset", {}, "alpaca"),
    "alpaca_cleaned": ("torchtune.datasets.alpaca_cleaned_dataset", {}, "alpaca"),
    "instruct": ("torchtune.datasets.instruct_dataset",
                 {"column_map": {"input": "question", "output": "answer"}}, "instruct"),
    "instruct_system": ("torchtune.datasets.instruct_dataset",
                        {"column_map": {"input": "question", "output": "answer"},
                         "new_system_prompt": "Answer briefly."}, "instruct"),
    "chat_sharegpt": ("torchtune.datasets.chat_dataset",
                      {"conversation_column": "conversations", "conversation_style": "sharegpt"},
                      "sharegpt"),
    "chat_openai": ("torchtune.datasets.chat_dataset",
                    {"conversation_column": "messages", "conversation_style": "openai"}, "openai"),
    "chat_system": ("torchtune.datasets.chat_dataset",
                    {"conversation_column": "conversations", "conversation_style": "sharegpt",
                     "new_system_prompt": "Be kind."}, "sharegpt"),
    "slimorca": ("torchtune.datasets.slimorca_dataset", {}, "sharegpt"),
    "samsum": ("torchtune.datasets.samsum_dataset", {}, "samsum"),
    "grammar": ("torchtune.datasets.grammar_dataset", {}, "grammar"),
    "stack_exchange_paired": ("torchtune.datasets.stack_exchange_paired_dataset", {}, "pairs"),
    "preference": ("torchtune.datasets.preference_dataset",
                   {"column_map": {"chosen": "chosen_conversations",
                                   "rejected": "rejected_conversations"}}, "pair_messages"),
    "hh_rlhf_helpful": ("torchtune.datasets.hh_rlhf_helpful_dataset", {}, "hh"),
    "preference_system": ("torchtune.datasets.preference_dataset",
                          {"column_map": {"chosen": "chosen_conversations",
                                          "rejected": "rejected_conversations"},
                           "new_system_prompt": "Prefer short answers."}, "pair_messages"),
}  # fmt: skip
TEXT_CASES = {
    "text_completion": ("torchtune.datasets.text_completion_dataset", {"column": "text"}, "text"),
    "text_completion_no_eos": ("torchtune.datasets.text_completion_dataset",
                               {"column": "text", "add_eos": False}, "text"),
}  # fmt: skip
# Not compared: torchtune's wikitext_dataset and cnn_dailymail_articles_dataset hand their
# max_seq_len to datasets.load_dataset as a builder option, which fails (a torchtune bug).


# torchtune tokenizer builder -> (file argument, its prompt_template: None or a value)
TOKENIZERS = {
    "llama3": ("torchtune.models.llama3.llama3_tokenizer", {}),
    "llama2": ("torchtune.models.llama2.llama2_tokenizer", {}),  # Llama2ChatTemplate
    "llama2_plain": ("torchtune.models.llama2.llama2_tokenizer", {"prompt_template": None}),
    "mistral": ("torchtune.models.mistral.mistral_tokenizer", {}),  # MistralChatTemplate
    "gemma": ("torchtune.models.gemma.gemma_tokenizer", {}),  # no template
    "phi3": ("torchtune.models.phi3.phi3_mini_tokenizer", {}),
    "qwen2": ("torchtune.models.qwen2.qwen2_tokenizer", {}),
    "qwen2_5": ("torchtune.models.qwen2_5.qwen2_5_tokenizer", {}),
}
# torchtune's Qwen configs all set max_seq_len: null. With a length set, torchtune's Qwen2
# tokenizer masks the final eos of every sample (its truncate() forces the last mask entry to
# True, even when nothing is cut), so the model is never taught to stop; tt trains that eos
# (test_qwen_with_a_max_seq_len_trains_the_final_eos_unlike_torchtune).
MAX_SEQ_LEN = {"qwen2": None, "qwen2_5": None}
# Which of the fixture's files each tokenizer reads.
TOKENIZER_FILES = {"llama3": "llama3", "qwen2": "qwen2", "qwen2_5": "qwen2_5"}
# Rows with a system turn: torchtune's Mistral template refuses them, and so does tt.
WITH_SYSTEM = {"instruct_system", "chat_sharegpt", "chat_system", "slimorca", "preference_system"}


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """kind -> (its tokenizer file, arguments torchtune alone needs). Llama 3: Meta's ranks
    format; torchtune numbers Llama 3's special tokens from 128000 (the real vocabulary's
    size) and tt after the ranks, the same for the real file, so torchtune gets its ids for
    this size. SentencePiece: a small BPE model with bos, eos and unk (Phi-3's role tokens
    are ids after it in both). Qwen2/2.5: a byte-level BPE whose special tokens follow its
    vocabulary, read by torchtune from the tokenizer.json tt reads."""
    import sentencepiece as spm
    from torchtune.models.llama3._tokenizer import LLAMA3_SPECIAL_TOKENS
    from torchtune.models.qwen2._tokenizer import QWEN2_SPECIAL_TOKENS
    from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS

    root = tmp_path_factory.mktemp("tokenizers")
    n = write_llama3_ranks(root / "llama3" / "tokenizer.model")
    added = [{"id": i - 128_000 + n, "content": c} for c, i in LLAMA3_SPECIAL_TOKENS.items()]
    (root / "special.json").write_text(json.dumps({"added_tokens": added}))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([" ".join(WORDS)] * 4 + ["[INST] <<SYS>> </SYS> [/INST] ---"]))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "sp"),
                                   vocab_size=150, model_type="bpe", minloglevel=2)  # fmt: skip
    llama3 = (
        root / "llama3" / "tokenizer.model",
        {"special_tokens_path": str(root / "special.json")},
    )
    qwen = {}
    for kind, special in (("qwen2", QWEN2_SPECIAL_TOKENS), ("qwen2_5", QWEN2_5_SPECIAL_TOKENS)):
        tokenizer_json = write_qwen2_tokenizer(root / kind, list(special), "<|endoftext|>")
        qwen[kind] = (root / kind / "vocab.json", {"special_tokens_path": str(tokenizer_json)})
    return {"llama3": llama3, "sentencepiece": (root / "sp.model", {}), **qwen}


def _write_rows(path: Path, kind: str) -> Path:
    path.write_text("".join(json.dumps(_rows(kind, i)) + "\n" for i in range(ROWS)))
    return path


def _both(tmp_path, tokenizer_files, tokenizer_kind, builder, args, kind, max_seq_len=512):
    component, template = TOKENIZERS[tokenizer_kind]
    file, reference_only = tokenizer_files[TOKENIZER_FILES.get(tokenizer_kind, "sentencepiece")]
    rows = _write_rows(tmp_path / f"{kind}.jsonl", kind)
    max_seq_len = MAX_SEQ_LEN.get(tokenizer_kind, max_seq_len)
    tokenizer = {"_component_": component, "path": str(file), "max_seq_len": max_seq_len,
                 **template}  # fmt: skip
    if file.name == "vocab.json":  # as torchtune's Qwen configs name the pair (tt drops it)
        tokenizer["merges_file"] = str(file.with_name("merges.txt"))
    dataset = {"_component_": builder, "source": "json", "data_files": str(rows),
               "split": "train", **args}  # fmt: skip
    reference_tokenizer = torchtune_instantiate(OmegaConf.create({**tokenizer, **reference_only}))
    reference = torchtune_instantiate(OmegaConf.create(dataset), reference_tokenizer)
    cfg, _ = from_torchtune(
        OmegaConf.create({"tokenizer": tokenizer, "dataset": dataset}),
        load_recipe("lora_finetune").spec.keys,
        "parity.yaml",
    )
    return reference, lambda: instantiate(cfg.dataset, instantiate(cfg.tokenizer))


def _assert_same(reference, ours, keys):
    assert len(reference) == len(ours) == ROWS
    for i in range(ROWS):
        for key, our_key in keys.items():
            assert list(ours[i][our_key]) == [int(t) for t in reference[i][key]], (i, key)


@pytest.mark.parametrize("tokenizer", sorted(TOKENIZERS))
@pytest.mark.parametrize("train_on_input", [False, True, "default"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sft_and_preference_builders_give_torchtunes_tokens(
    case, train_on_input, tokenizer, tmp_path, tokenizer_files
):
    builder, args, kind = CASES[case]
    if train_on_input != "default":  # else each builder's own default (alpaca's is True)
        args = {**args, "train_on_input": train_on_input}
    reference, ours = _both(tmp_path, tokenizer_files, tokenizer, builder, args, kind)
    if tokenizer == "mistral" and case in WITH_SYSTEM:
        with pytest.raises(ValueError, match="System prompts are not supported"):
            reference[0]
        with pytest.raises(ValueError, match="Mistral chat template has no system turn"):
            ours()[0]
        return
    if kind in ("pairs", "pair_messages", "hh"):
        keys = {"chosen_input_ids": "chosen_tokens", "chosen_labels": "chosen_labels",
                "rejected_input_ids": "rejected_tokens", "rejected_labels": "rejected_labels"}  # fmt: skip
    else:
        keys = {"tokens": "tokens", "labels": "labels"}
    _assert_same(reference, ours(), keys)


@pytest.mark.parametrize("tokenizer", sorted(TOKENIZERS))
@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_completion_gives_torchtunes_tokens(case, tokenizer, tmp_path, tokenizer_files):
    reference, ours = _both(tmp_path, tokenizer_files, tokenizer, *TEXT_CASES[case])
    _assert_same(reference, ours(), {"tokens": "tokens", "labels": "labels"})


@pytest.mark.parametrize("tokenizer", ["qwen2", "qwen2_5"])
def test_qwen_with_a_max_seq_len_trains_the_final_eos_unlike_torchtune(
    tokenizer, tmp_path, tokenizer_files, monkeypatch
):
    monkeypatch.setitem(MAX_SEQ_LEN, tokenizer, 512)
    builder, args, kind = CASES["alpaca"]
    args = {**args, "train_on_input": False}
    reference, ours = _both(tmp_path, tokenizer_files, tokenizer, builder, args, kind)
    ours = ours()
    for i in range(ROWS):
        theirs, mine = reference[i], ours[i]
        assert list(mine["tokens"]) == [int(t) for t in theirs["tokens"]]
        assert list(mine["labels"])[:-1] == [int(t) for t in theirs["labels"]][:-1]
        assert (int(theirs["labels"][-1]), mine["labels"][-1]) == (-100, mine["tokens"][-1])


# SFT builders x tokenizers that can pack (Mistral's refusal of system turns is tested above).
PACKED = [(case, tokenizer) for case, (_, _, kind) in sorted(CASES.items())
          if kind not in ("pairs", "pair_messages", "hh")
          for tokenizer in sorted(set(TOKENIZERS) - set(MAX_SEQ_LEN))
          if not (tokenizer == "mistral" and case in WITH_SYSTEM)]  # fmt: skip
# Text: documents whole, as tt packs them (torchtune's default splits them; tt says so).
TEXT_PACKED = ("torchtune.datasets.text_completion_dataset",
               {"column": "text", "split_across_pack": False}, "text")  # fmt: skip
PACKED += [
    ("text_completion", tokenizer) for tokenizer in sorted(set(TOKENIZERS) - set(MAX_SEQ_LEN))
]


@pytest.mark.parametrize(("case", "tokenizer"), PACKED)
def test_packed_sft_builders_give_torchtunes_packs(case, tokenizer, tmp_path, tokenizer_files):
    """`packed: true`: the same rows in the same packs (greedy, in order, none split), each
    document's positions from 0. Padding is only compared by its labels (-100 in both):
    torchtune pads tokens with id 0, tt with the tokenizer's pad id; neither is trained or
    attended to. Labels are equal but at each document's first position, which tt masks.
    (Qwen is left out: packing needs a max_seq_len, see MAX_SEQ_LEN.)"""
    builder, args, kind = CASES.get(case) or TEXT_PACKED
    reference, ours = _both(tmp_path, tokenizer_files, tokenizer, builder,
                            {**args, "packed": True}, kind, max_seq_len=256)  # fmt: skip
    ours = ours()
    assert len(ours) == len(reference) > 1
    for i in range(len(reference)):
        theirs, mine = reference[i], ours[i]
        used = int(sum(theirs["seq_lens"][: len(set(mine["document_ids"]) - {-1})]))
        # tt masks each document's first label: torchtune trains the previous document's
        # last token to predict it (a target across documents that unpacked rows never have)
        starts = {j for j, pos in enumerate(mine["input_pos"][:used]) if pos == 0}
        expected = [-100 if j in starts else int(t) for j, t in enumerate(theirs["labels"])]
        assert list(mine["labels"]) == expected, i
        assert list(mine["tokens"])[:used] == [int(t) for t in theirs["tokens"]][:used], i
        assert list(mine["input_pos"])[:used] == [int(t) for t in theirs["input_pos"]][:used]
        assert mine["document_ids"][used:] == [-1] * (256 - used)


# torchtune's tag templates on the tokenizer (each builder's rows as above).
TEMPLATED = {
    "samsum": "torchtune.data.SummarizeTemplate",
    "grammar": "torchtune.data.GrammarErrorCorrectionTemplate",
    "instruct": "torchtune.data.QuestionAnswerTemplate",
    "chat_sharegpt": {"system": ["<sys> ", " </sys>"], "user": ["User: ", "\n"],
                      "assistant": ["Bot:", ""]},
}  # fmt: skip


@pytest.mark.parametrize("tokenizer", sorted(TOKENIZERS))
@pytest.mark.parametrize("train_on_input", [False, True])
@pytest.mark.parametrize("case", sorted(TEMPLATED))
def test_prompt_templates_give_torchtunes_tokens(
    case, train_on_input, tokenizer, tmp_path, tokenizer_files, monkeypatch
):
    builder, args, kind = CASES[case]
    args = {**args, "train_on_input": train_on_input}
    component, _ = TOKENIZERS[tokenizer]
    monkeypatch.setitem(TOKENIZERS, tokenizer, (component, {"prompt_template": None}))
    _, untemplated = _both(tmp_path, tokenizer_files, tokenizer, builder, args, kind)
    monkeypatch.setitem(TOKENIZERS, tokenizer, (component, {"prompt_template": TEMPLATED[case]}))
    reference, ours = _both(tmp_path, tokenizer_files, tokenizer, builder, args, kind)
    ours = ours()
    _assert_same(reference, ours, {"tokens": "tokens", "labels": "labels"})
    assert len(ours[0]["tokens"]) > len(untemplated()[0]["tokens"])  # the tags are there
