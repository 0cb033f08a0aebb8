import json
import logging

import datasets
import pytest
import tt_data
from tt_data.messages import Message
from tt_data.tokenizers import Llama3Tokenizer

IGNORE = -100


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trained_text(tok, item, prefix=""):
    return tok.decode([t for t in item[f"{prefix}labels"] if t != IGNORE])


def test_instruct_dataset_masks_prompt_and_trains_answer(tmp_path, llama3_tokenizer):
    tok = llama3_tokenizer
    files = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 1 + 2?", "answer": "3"}])
    ds = tt_data.instruct_dataset(
        tok, source="json", data_files=files, column_map={"input": "question", "output": "answer"}
    )
    item = ds[0]
    expected, mask = tok.tokenize_messages(
        [Message("user", "What is 1 + 2?", masked=True), Message("assistant", "3")]
    )
    assert item["tokens"] == expected
    assert item["labels"] == [IGNORE if m else t for t, m in zip(expected, mask)]
    assert trained_text(tok, item) == "<|start_header_id|>assistant<|end_header_id|>\n\n3<|eot_id|>"
    all_trained = tt_data.instruct_dataset(tok, source="json", data_files=files, train_on_input=True,
                                           column_map={"input": "question", "output": "answer"})  # fmt: skip
    assert all_trained[0]["labels"][1:] == all_trained[0]["tokens"][1:]


def test_missing_column_names_file_row_column_and_present_columns(tmp_path, llama3_tokenizer):
    """Found while the dataset is built, before training starts."""
    rows = [{"input": "a", "output": "b"}, {"input": "c", "answer": "d"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(
        tt_data.DataError,
        match=r"d.jsonl: row 1 \(line 2\): missing column 'output'.*\['answer', 'input'\]",
    ):
        tt_data.instruct_dataset(llama3_tokenizer, source="json", data_files=path)


BAD_FILES = {
    "not UTF-8": (b'{"input": "a", "output": "b"}\n{"input": "c\xff", "output": "d"}\n',
                  r"line 2: byte b'\\xff' at column 13 is not UTF-8"),
    "empty": (b"", r"is empty: a dataset file needs at least one row"),
    "malformed JSON": (b'{"input": "a", "output": "b"}\n{"input": "c", "output": \n',
                       r"line 2: not valid JSON \(Expecting value at column 26\)"),
    "an int in a text column": (
        "".join(json.dumps({"input": f"q{i}", "output": 42 if i == 13 else f"a{i}"}) + "\n"
                for i in range(20)).encode(),
        r"row 13 \(line 14\): column 'output' must be a str, got int: 42",
    ),
}  # fmt: skip


@pytest.mark.parametrize("problem", sorted(BAD_FILES))
def test_a_bad_data_file_is_named_by_file_and_line_before_training(
    tmp_path, llama3_tokenizer, problem
):
    content, message = BAD_FILES[problem]
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(tt_data.DataError, match=rf"train.jsonl(,| is|:) .*{message}|{message}"):
        tt_data.instruct_dataset(llama3_tokenizer, source="json", data_files=str(path))


def test_non_string_field_names_row(tmp_path, llama3_tokenizer):
    rows = [{"input": "a", "output": "b"}, {"input": "c", "output": ["x"]}]
    files = write_jsonl(tmp_path / "d.jsonl", [rows[0]])
    ds = tt_data.instruct_dataset(llama3_tokenizer, source="json", data_files=files)
    transform = ds.sample_fn
    with pytest.raises(TypeError, match=r"row 7: column 'output' must be a str, got list"):
        transform(rows[1], 7)


def test_empty_dataset_is_an_error(tmp_path, llama3_tokenizer):
    files = write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "output": "b"}])
    with pytest.raises(ValueError, match=r"dataset 'json'.*has no rows after filter_fn"):
        tt_data.instruct_dataset(
            llama3_tokenizer, source="json", data_files=files, filter_fn=lambda r: False
        )


def test_truncation_keeps_eos_and_is_reported_once(tmp_path, tiktoken_file, caplog):
    tok = Llama3Tokenizer(tiktoken_file, max_seq_len=16)
    rows = [{"text": "The quick brown fox jumps over the lazy dog. " * 5}] * 4
    ds = tt_data.text_completion_dataset(
        tok, source="json", data_files=write_jsonl(tmp_path / "t.jsonl", rows)
    )
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert all(len(it["tokens"]) == 16 and it["tokens"][-1] == tok.eos_id for it in items)
    assert all(it["labels"] == it["tokens"] for it in items)
    assert tok.num_truncated == 4
    assert sum("truncated" in r.message for r in caplog.records) == 1


def test_chat_dataset_sharegpt_and_openai_agree(tmp_path, llama3_tokenizer):
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."},
                                  {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                  {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}  # fmt: skip
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    openai = {"messages": [{"role": role[t["from"]], "content": t["value"]} for t in sharegpt["conversations"]]}  # fmt: skip
    a = tt_data.chat_dataset(llama3_tokenizer, source="json", conversation_style="sharegpt",
                             data_files=write_jsonl(tmp_path / "s.jsonl", [sharegpt]))  # fmt: skip
    b = tt_data.chat_dataset(llama3_tokenizer, source="json",
                             data_files=write_jsonl(tmp_path / "o.jsonl", [openai]))  # fmt: skip
    assert a[0] == b[0]
    assert trained_text(llama3_tokenizer, a[0]).count("<|eot_id|>") == 2
    last = tt_data.chat_dataset(llama3_tokenizer, source="json", masking_strategy="train_on_last",
                                data_files=write_jsonl(tmp_path / "o.jsonl", [openai]))  # fmt: skip
    assert "Hello" not in trained_text(llama3_tokenizer, last[0])
    with pytest.raises(ValueError, match=r"conversation_style 'chatml'.*'openai', 'sharegpt'"):
        tt_data.chat_dataset(llama3_tokenizer, source="json", conversation_style="chatml",
                             data_files=write_jsonl(tmp_path / "o.jsonl", [openai]))  # fmt: skip
    bad = {"conversations": [{"from": "robot", "value": "x"}]}
    with pytest.raises(ValueError, match=r"b.jsonl: row 0 \(line 1\): turn 0 has 'from'='robot'"):
        tt_data.chat_dataset(llama3_tokenizer, source="json", conversation_style="sharegpt",
                             data_files=write_jsonl(tmp_path / "b.jsonl", [bad]))[0]  # fmt: skip


def test_a_configured_system_prompt_replaces_the_rows_and_is_never_trained(
    tmp_path, llama3_tokenizer
):
    """system_prompt is context: the same words in every row, not trained even when every
    other turn is (torchtune's new_system_prompt behaves the same)."""
    tok = llama3_tokenizer
    row = {"conversations": [{"from": "system", "value": "Old."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}]}  # fmt: skip
    ds = tt_data.chat_dataset(tok, source="json", conversation_style="sharegpt",
                              masking_strategy="train_on_all", system_prompt="New.",
                              data_files=write_jsonl(tmp_path / "s.jsonl", [row]))  # fmt: skip
    text = tok.decode(ds[0]["tokens"])
    assert "New." in text and "Old." not in text
    trained = trained_text(tok, ds[0])
    assert "Hi" in trained and "Hello" in trained and "New." not in trained
    files = write_jsonl(tmp_path / "d.jsonl", [{"input": "1 + 2?", "output": "3"}])
    instruct = tt_data.instruct_dataset(tok, source="json", data_files=files,
                                        train_on_input=True, system_prompt="Add.")  # fmt: skip
    assert "Add." not in trained_text(tok, instruct[0]) and "1 + 2?" in trained_text(
        tok, instruct[0]
    )


def test_text_completion_without_eos_leaves_the_text_open(tmp_path, llama3_tokenizer):
    files = write_jsonl(tmp_path / "t.jsonl", [{"text": "once upon a time"}])
    closed = tt_data.text_completion_dataset(llama3_tokenizer, source="json", data_files=files)
    opened = tt_data.text_completion_dataset(llama3_tokenizer, source="json", data_files=files,
                                             add_eos=False)  # fmt: skip
    assert closed[0]["tokens"] == [*opened[0]["tokens"], llama3_tokenizer.eos_id]
    assert opened[0]["labels"] == opened[0]["tokens"]


def test_preference_dataset_string_and_message_list_forms(tmp_path, llama3_tokenizer):
    tok = llama3_tokenizer
    strings = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    lists = {
        "chosen": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "5"}],
    }  # fmt: skip
    a = tt_data.preference_dataset(
        tok, source="json", data_files=write_jsonl(tmp_path / "a.jsonl", [strings])
    )
    b = tt_data.preference_dataset(
        tok, source="json", data_files=write_jsonl(tmp_path / "b.jsonl", [lists])
    )
    assert a[0] == b[0]
    assert trained_text(tok, a[0], "chosen_").endswith("4<|eot_id|>")
    assert trained_text(tok, a[0], "rejected_").endswith("5<|eot_id|>")


NAMED = {
    "alpaca": [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
               {"instruction": "Say hi.", "input": "", "output": "hi"}],
    "alpaca_cleaned": [{"instruction": "Say hi.", "input": "", "output": "hi"}],
    "slimorca": [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
    "samsum": [{"id": "1", "dialogue": "Alice: hi\nBob: hello", "summary": "They greet."}],
    "grammar": [{"input": "she go home", "output": "She goes home."}],
    "gsm8k": [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}],
    "stack_exchange_paired": [{"qid": 1, "question": "How?", "response_j": "Like this.",
                               "response_k": "No idea.", "date": "2020"}],
    "hh_rlhf_helpful": [{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]}],
    "wikitext": [{"page": "Valkyria Chronicles is a video game."}],
    "cnn_dailymail": [{"article": "The news today.", "highlights": "News.", "id": "x"}],
}  # fmt: skip
EXPECTED_TRAINED = {
    "alpaca": "5", "alpaca_cleaned": "hi", "slimorca": "Hello", "samsum": "They greet.",
    "grammar": "She goes home.", "gsm8k": "#### 4", "stack_exchange_paired": "Like this.",
    "hh_rlhf_helpful": "Hello", "wikitext": "video game.", "cnn_dailymail": "The news today.",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_builders_on_local_files_with_hub_schema(tmp_path, llama3_tokenizer, name):
    files = write_jsonl(tmp_path / f"{name}.jsonl", NAMED[name])
    ds = getattr(tt_data, name)(llama3_tokenizer, source="json", data_files=files)
    assert len(ds) == len(NAMED[name])
    prefix = "chosen_" if "chosen_tokens" in ds[0] else ""
    assert EXPECTED_TRAINED[name] in trained_text(llama3_tokenizer, ds[0], prefix)


def test_alpaca_prompt_with_and_without_input(tmp_path, llama3_tokenizer):
    files = write_jsonl(tmp_path / "a.jsonl", NAMED["alpaca"])
    ds = tt_data.alpaca(llama3_tokenizer, source="json", data_files=files)
    with_input, without = (llama3_tokenizer.decode(ds[i]["tokens"]) for i in range(2))
    assert "### Input:\n2 and 3\n\n### Response:" in with_input
    assert "### Input" not in without and "paired with an input" not in without


def test_streaming_source_gives_iterable_dataset(tmp_path, llama3_tokenizer):
    rows = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]
    files = write_jsonl(tmp_path / "d.jsonl", rows)
    kw = dict(source="json", data_files=files)
    eager = tt_data.instruct_dataset(llama3_tokenizer, **kw)
    streamed = tt_data.instruct_dataset(llama3_tokenizer, streaming=True, **kw)
    assert list(streamed) == [eager[i] for i in range(5)]
    assert list(streamed.iter_from(3)) == [eager[3], eager[4]]


def test_synthetic_arithmetic_is_deterministic_and_correct(llama3_tokenizer):
    rows = tt_data.datasets.arithmetic_rows(50, seed=3)
    assert rows == tt_data.datasets.arithmetic_rows(50, seed=3)
    assert rows != tt_data.datasets.arithmetic_rows(50, seed=3, split="validation")
    for row in rows:
        a, b = (
            int(x) for x in row["input"].removeprefix("What is ").removesuffix("?").split(" + ")
        )
        assert row["output"] == str(a + b) and row["wrong"] != row["output"]
    ds = tt_data.synthetic_arithmetic(llama3_tokenizer, n=50, seed=3)
    assert trained_text(llama3_tokenizer, ds[0]).endswith(f"{rows[0]['output']}<|eot_id|>")
    pref = tt_data.synthetic_arithmetic_preference(llama3_tokenizer, n=50, seed=3)
    assert trained_text(llama3_tokenizer, pref[0], "rejected_").endswith(
        f"{rows[0]['wrong']}<|eot_id|>"
    )
    with pytest.raises(ValueError, match=r"split 'test' is not valid.*'validation'"):
        tt_data.datasets.arithmetic_rows(5, split="test")


def test_held_out_sums_never_reach_the_train_split():
    def sums(rows):
        return {tuple(map(int, r["input"][8:-1].split(" + "))) for r in rows}

    train = sums(tt_data.datasets.arithmetic_rows(4000, held_out_sums=True))
    held_out = sums(tt_data.datasets.arithmetic_rows(1000, split="validation", held_out_sums=True))
    every = {(a, b) for a in range(21) for b in range(21)}
    expected = {p for p in every if tt_data.datasets.synthetic.is_held_out_sum(*p)}
    assert held_out == expected and train == every - expected
    assert 0.1 < len(held_out) / len(every) < 0.3  # a fifth, by hash
    # the default keeps drawing every sum in both splits (tiny/full and tiny/dpo depend on it)
    assert sums(tt_data.datasets.arithmetic_rows(4000)) == every


def test_packed_builder_needs_a_length(tmp_path, llama3_tokenizer):
    with pytest.raises(ValueError, match="packed=True needs a pack length"):
        tt_data.synthetic_arithmetic(llama3_tokenizer, n=4, packed=True)
    packed = tt_data.synthetic_arithmetic(llama3_tokenizer, n=20, packed=True, max_seq_len=128)
    assert isinstance(packed, tt_data.PackedDataset) and len(packed) < 20


def test_hf_dataset_rows_are_accepted(llama3_tokenizer):
    # load_rows hands back a datasets.Dataset; in-memory ones work the same through the builders
    rows = datasets.Dataset.from_list([{"input": "x", "output": "y"}])
    ds = tt_data.datasets.TokenizedDataset(rows, tt_data.datasets.SFTTransform(
        llama3_tokenizer, tt_data.datasets.base.InputOutputToMessages()))  # fmt: skip
    assert trained_text(llama3_tokenizer, ds[0]).endswith("y<|eot_id|>")


def test_plain_text_prompts_have_no_chat_template(tmp_path, llama3_tokenizer):
    tok = llama3_tokenizer
    files = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The movie was"}])
    plain = tt_data.prompt_dataset(tok, source="json", data_files=files, chat=False)
    assert plain[0]["prompt_tokens"] == tok.encode("The movie was", add_eos=False)
    chat = tt_data.prompt_dataset(tok, source="json", data_files=files)
    assert chat[0]["prompt_tokens"] != plain[0]["prompt_tokens"]  # headers around the turn
    with pytest.raises(ValueError, match="system_prompt needs chat=True"):
        tt_data.prompt_dataset(tok, source="json", data_files=files, chat=False,
                               system_prompt="Be brief.")  # fmt: skip
