import pytest
from transformers import AutoTokenizer
from tt_data.messages import Message, apply_masking
from tt_data.tokenizers import (
    HFTokenizer,
    Llama3Tokenizer,
    SentencePieceTokenizer,
    from_pretrained,
)

TEMPLATE_NAMES = ["llama3", "chatml", "gemma", "mistral", "phi3"]
WITH_SYSTEM = [
    Message("system", "You are a helpful assistant."),
    Message("user", "What is 17 + 25?"),
    Message("assistant", "The answer is 42."),
    Message("user", "Summarize this dialogue: Alice met Bob."),
    Message("assistant", "Alice met Bob at the station."),
]
WITHOUT_SYSTEM = WITH_SYSTEM[1:]
SHORT_ANSWER = [Message("user", "What is 1 + 2?"), Message("assistant", "d")]


def _dicts(messages):
    return [m.to_dict() for m in messages]


def _trained_text(tok, messages, strategy="train_on_assistant"):
    tokens, mask = tok.tokenize_messages(apply_masking(messages, strategy))
    return tok.decode([t for t, m in zip(tokens, mask) if not m], skip_special_tokens=False)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("conversation", [WITH_SYSTEM, WITHOUT_SYSTEM, SHORT_ANSWER])
def test_hf_ids_equal_transformers_apply_chat_template(hf_dirs, name, conversation):
    reference = AutoTokenizer.from_pretrained(hf_dirs[name])
    expected = reference.apply_chat_template(_dicts(conversation), tokenize=True)["input_ids"]
    tok = from_pretrained(hf_dirs[name])
    assert isinstance(tok, HFTokenizer)
    tokens, mask = tok.tokenize_messages(apply_masking(conversation, "train_on_assistant"))
    assert tokens == expected
    assert len(mask) == len(tokens)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_hf_generation_prompt_equals_transformers(hf_dirs, name):
    prompt = WITH_SYSTEM[:4] if name != "gemma" else WITHOUT_SYSTEM[:3]
    reference = AutoTokenizer.from_pretrained(hf_dirs[name])
    expected = reference.apply_chat_template(
        _dicts(prompt), tokenize=True, add_generation_prompt=True
    )["input_ids"]
    tokens, _ = from_pretrained(hf_dirs[name]).tokenize_messages(prompt, add_generation_prompt=True)
    assert tokens == expected


# What each family trains for an assistant turn: its content and the end-of-turn text.
TRAINED = {
    "llama3": "The answer is 42.<|eot_id|>Alice met Bob at the station.<|eot_id|>",
    "chatml": "The answer is 42.<|im_end|>\nAlice met Bob at the station.<|im_end|>\n",
    "gemma": "The answer is 42.<end_of_turn>\nAlice met Bob at the station.<end_of_turn>\n",
    "mistral": "The answer is 42.</s>Alice met Bob at the station.</s>",
    "phi3": "The answer is 42.<|end|>\nAlice met Bob at the station.<|end|>\n<|endoftext|>",
}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_hf_mask_trains_exactly_assistant_content_and_end_of_turn(hf_dirs, name):
    tok = from_pretrained(hf_dirs[name])
    trained = _trained_text(tok, WITH_SYSTEM).replace(" The answer", "The answer")
    assert trained.replace(" Alice", "Alice") == TRAINED[name]


def test_hf_mask_strategies(hf_dirs):
    tok = from_pretrained(hf_dirs["chatml"])
    all_tokens, all_mask = tok.tokenize_messages(apply_masking(WITH_SYSTEM, "train_on_all"))
    assert not any(all_mask)
    last = _trained_text(tok, WITH_SYSTEM, "train_on_last")
    assert last == "Alice met Bob at the station.<|im_end|>\n"


def test_hf_short_answer_located_after_header_not_in_end_marker(hf_dirs):
    # "d" also occurs in "<|end|>": the header-based location must win over text search.
    assert _trained_text(from_pretrained(hf_dirs["phi3"]), SHORT_ANSWER) == (
        "d<|end|>\n<|endoftext|>"
    )


def test_hf_encode_decode_and_special_ids(hf_dirs):
    tok = from_pretrained(hf_dirs["llama3"])
    ids = tok.encode("The quick brown fox.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "The quick brown fox."
    reference = AutoTokenizer.from_pretrained(hf_dirs["llama3"])
    assert ids[1:-1] == reference.encode("The quick brown fox.", add_special_tokens=False)
    chatml = from_pretrained(hf_dirs["chatml"])
    assert chatml.bos_id is None and chatml.encode("hi", add_eos=False) == chatml.encode(
        "hi", add_bos=False, add_eos=False
    )
    assert chatml.pad_id == reference.convert_tokens_to_ids("<|endoftext|>")


def test_hf_truncation_keeps_final_eos_and_counts(hf_dirs, caplog):
    tok = HFTokenizer.from_dir(hf_dirs["chatml"], max_seq_len=12)
    for _ in range(3):
        tokens, mask = tok.tokenize_messages(apply_masking(WITH_SYSTEM, "train_on_assistant"))
    assert len(tokens) == 12 and tokens[-1] == tok.eos_id and len(mask) == 12
    assert tok.num_truncated == 3
    assert sum("truncated to max_seq_len=12" in r.message for r in caplog.records) == 1


def test_hf_missing_template_and_eos_errors(hf_tokenizer_json, tmp_path):
    tok = HFTokenizer(hf_tokenizer_json, config={"eos_token": "</s>"})
    with pytest.raises(ValueError, match="no chat_template"):
        tok.tokenize_messages(WITH_SYSTEM)
    with pytest.raises(ValueError, match=r"eos_token='<nope>'"):
        HFTokenizer(hf_tokenizer_json, config={"eos_token": "<nope>"})
    with pytest.raises(ValueError, match="empty message list"):
        tok.tokenize_messages([])


def test_hf_torchtune_qwen2_layout(hf_dirs, hf_tokenizer_json):
    """torchtune's Qwen2 turns: the final answer ends with eos, not its own <|im_end|>\\n."""
    tok = from_pretrained(hf_dirs["chatml"], chat_format="torchtune_qwen2", eos_token="<|im_end|>")
    tokens, mask = tok.tokenize_messages(apply_masking(WITH_SYSTEM, "train_on_assistant"))
    assert tok.decode(tokens, skip_special_tokens=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 42.<|im_end|>\n"
        "<|im_start|>user\nSummarize this dialogue: Alice met Bob.<|im_end|>\n"
        "<|im_start|>assistant\nAlice met Bob at the station.<|im_end|>"
    )  # the whole turn is trained, its header too, as in torchtune
    assert _trained_text(tok, WITH_SYSTEM) == (
        "<|im_start|>assistant\nThe answer is 42.<|im_end|>\n"
        "<|im_start|>assistant\nAlice met Bob at the station.<|im_end|>"
    )
    prompt, prompt_mask = tok.tokenize_messages(WITH_SYSTEM[:2], add_generation_prompt=True)
    assert tok.decode(prompt, skip_special_tokens=False).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="role 'tool' is not supported by chat_format"):
        tok.tokenize_messages([Message("tool", "{}")])
    with pytest.raises(ValueError, match=r"chat_format 'qwen9' is not valid"):
        HFTokenizer(hf_tokenizer_json, config={"eos_token": "</s>"}, chat_format="qwen9")


def test_sentencepiece_torchtune_phi3_layout(sp_model):
    """torchtune's Phi-3 turns: role ids after the model's pieces, <|end|> after each turn."""
    tok = SentencePieceTokenizer(sp_model, chat_format="torchtune_phi3")
    tokens, mask = tok.tokenize_messages(apply_masking(WITHOUT_SYSTEM[:2], "train_on_assistant"))
    newline = tok._sp.encode("\n")
    user, assistant, end = 32010, 32001, 32007
    first_answer = tokens.index(assistant)
    assert tokens[:2] == [tok.bos_id, user] and tokens[-1 - len(newline)] == end
    assert tokens[first_answer + 1 : first_answer + 1 + len(newline)] == newline
    assert tok.decode([t for t in tokens if t < tok._sp.get_piece_size()]).count("42") == 1
    assert mask == [True] * first_answer + [False] * (len(tokens) - first_answer)
    assert tok.vocab_size == 32011 and {32000, end} <= set(tok.stop_tokens)
    assert tok.encode("a")[-1] == tok.eos_id == tok._sp.eos_id()  # text ends with </s>


def test_prompt_template_must_be_role_tags_and_needs_a_torchtune_layout(
    sp_model, hf_tokenizer_json, tiktoken_file
):
    with pytest.raises(ValueError, match=r"prompt_template \{'user': 'Q: '\} is not valid"):
        Llama3Tokenizer(tiktoken_file, prompt_template={"user": "Q: "})
    with pytest.raises(ValueError, match="prompt_template needs chat_format 'torchtune_plain'"):
        SentencePieceTokenizer(sp_model, chat_format="gemma", prompt_template={"user": ["Q", ""]})
    with pytest.raises(ValueError, match="prompt_template needs chat_format='torchtune_qwen2'"):
        HFTokenizer(hf_tokenizer_json, config={"eos_token": "</s>"},
                    prompt_template={"user": ["Q", ""]})  # fmt: skip
    tok = Llama3Tokenizer(tiktoken_file, prompt_template={"user": ["Question: ", "\n\nAnswer: "]})
    tokens, _ = tok.tokenize_messages(SHORT_ANSWER)
    text = tok.decode(tokens, skip_special_tokens=False)
    assert "user<|end_header_id|>\n\nQuestion:What is 1 + 2?Answer:<|eot_id|>" in text


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"expected tokenizer.json.*README.md"):
        from_pretrained(tmp_path)


TEXTS = ["Hello, how are you today?", "Über café naïve — 17 + 25 = 42", "a\n\n  b\tc"]


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_round_trip(sp_model, text):
    tok = from_pretrained(sp_model.parent)
    assert isinstance(tok, SentencePieceTokenizer)
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text


def test_sentencepiece_chat_formats(sp_model):
    mistral = SentencePieceTokenizer(sp_model, chat_format="mistral")
    tokens, mask = mistral.tokenize_messages(apply_masking(WITH_SYSTEM, "train_on_assistant"))
    assert mistral.decode(tokens) == (
        "[INST] You are a helpful assistant.\n\nWhat is 17 + 25? [/INST] The answer is 42. "
        "[INST] Summarize this dialogue: Alice met Bob. [/INST] Alice met Bob at the station."
    )
    trained = [t for t, m in zip(tokens, mask) if not m]
    assert mistral.decode(trained) == "The answer is 42. Alice met Bob at the station."
    assert trained.count(mistral.eos_id) == 2
    gemma = SentencePieceTokenizer(sp_model, chat_format="gemma")
    tokens, _ = gemma.tokenize_messages(WITHOUT_SYSTEM[:2])
    end_of_turn = gemma._sp.piece_to_id("<end_of_turn>")
    assert tokens.count(end_of_turn) == 2 and end_of_turn in gemma.stop_tokens
    with pytest.raises(ValueError, match=r"chat_format 'llama9'.*'gemma', 'mistral'"):
        SentencePieceTokenizer(sp_model, chat_format="llama9")
    with pytest.raises(ValueError, match="role 'tool' is not supported"):
        mistral.tokenize_messages([Message("tool", "{}")])


@pytest.mark.parametrize("text", TEXTS)
def test_tiktoken_round_trip(tiktoken_file, text):
    tok = from_pretrained(tiktoken_file.parent)
    assert isinstance(tok, Llama3Tokenizer)
    ids = tok.encode(text, add_bos=False, add_eos=False)
    assert tok.decode(ids) == text
    assert len(tok.encode("The quick brown fox", add_bos=False, add_eos=False)) < 19
    # Special-token text in user input is plain text, never a control token.
    assert tok.bos_id not in tok.encode("<|begin_of_text|>", add_bos=False)


def test_tiktoken_special_token_layout(llama3_tokenizer, tiktoken_file):
    tok = llama3_tokenizer
    base = sum(1 for line in tiktoken_file.read_text().splitlines() if line)
    assert tok.bos_id == base and tok.eos_id == base + 1
    assert (tok.start_header_id, tok.end_header_id) == (base + 6, base + 7)
    assert (tok.eom_id, tok.eot_id, tok.python_tag_id) == (base + 8, base + 9, base + 10)
    assert tok.vocab_size == base + 256
    assert tok.special["<|reserved_special_token_247|>"] == base + 255


def test_llama3_chat_format_matches_documented_layout(llama3_tokenizer):
    tok = llama3_tokenizer
    tokens, mask = tok.tokenize_messages(apply_masking(WITH_SYSTEM[:3], "train_on_assistant"))
    assert tok.decode(tokens) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 17 + 25?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is 42.<|eot_id|>"
    )
    trained = tok.decode([t for t, m in zip(tokens, mask) if not m])
    assert trained == "<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is 42.<|eot_id|>"
    tool_call, _ = tok.tokenize_messages([Message("assistant", "call()", eot=False)])
    assert tool_call[-1] == tok.eom_id
    prompt, _ = tok.tokenize_messages(WITH_SYSTEM[:2], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama3_append_end_of_text_ends_a_conversation_as_torchtune_does(tiktoken_file):
    tok = Llama3Tokenizer(tiktoken_file, append_end_of_text=True)
    plain = Llama3Tokenizer(tiktoken_file)
    conversation = apply_masking(WITH_SYSTEM[:3], "train_on_assistant")
    tokens, mask = tok.tokenize_messages(conversation)
    assert (tokens, mask) == (
        [*plain.tokenize_messages(conversation)[0], tok.eos_id],
        [*plain.tokenize_messages(conversation)[1], True],  # masked: no loss on it
    )
    # a generation prompt is left open
    assert tok.tokenize_messages(WITH_SYSTEM[:2], add_generation_prompt=True) == (
        plain.tokenize_messages(WITH_SYSTEM[:2], add_generation_prompt=True)
    )


def test_tiktoken_bad_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("QQ== 0\nnot-a-pair\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:2: expected 'base64_token rank'"):
        Llama3Tokenizer(bad)


def test_message_validation():
    with pytest.raises(ValueError, match=r"role 'bot' is not valid.*'assistant'"):
        Message("bot", "hi")
    with pytest.raises(TypeError, match="must be a str, got int"):
        Message("user", 3)
    with pytest.raises(ValueError, match=r"masking_strategy 'all'.*train_on_last"):
        apply_masking(WITH_SYSTEM, "all")
