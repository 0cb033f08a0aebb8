"""Messages with images, the image token in both tokenizer backends, and the multimodal
datasets (Llama 3.2 Vision style)."""

import io
import json

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import tt_data
from transformers import AutoTokenizer
from tt_data.messages import ImagePart, Message, TextPart, apply_masking
from tt_data.tokenizers import HFTokenizer, SentencePieceTokenizer, from_pretrained

IGNORE = -100
IMAGE = {"type": "image"}

# Llama 3.2 Vision's chat template, cut to what decides the tokens here: a system turn only
# without images, image parts rendered as <|image|> where they are, text parts trimmed.
VISION_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- set image_ns = namespace(has_images=false) %}"
    "{%- for message in messages %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{%- set image_ns.has_images = true %}{%- endif %}"
    "{%- endfor %}{%- endfor %}"
    "{%- if image_ns.has_images and not system_message == '' %}"
    "{{- raise_exception('Prompting with images is incompatible with system messages.') }}"
    "{%- endif %}"
    "{%- if not image_ns.has_images %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
VISION_SPECIAL = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}

ONE_IMAGE = [
    Message("user", [IMAGE, {"type": "text", "text": "What is 17 + 25? "}]),
    Message("assistant", "The answer is 42."),
]
TWO_IMAGES = [
    Message("user", [{"type": "text", "text": "Compare"}, IMAGE, {"type": "text", "text": "and"},
                     IMAGE, {"type": "text", "text": "please."}]),
    Message("assistant", "Alice met Bob at the station."),
    Message("user", "Summarize this dialogue: Alice met Bob."),
    Message("assistant", "The answer is 42."),
]  # fmt: skip
CONSECUTIVE = [
    Message("user", [IMAGE, IMAGE, {"type": "text", "text": "How are you today?"}]),
    Message("assistant", "I am fine, thank you!"),
]


def write_hf_dir(directory, tokenizer_json, config):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def vision_hf_dir(tmp_path_factory, hf_tokenizer_json):
    """The test BPE plus an added <|image|> token, with the vision template."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(hf_tokenizer_json))
    tok.add_special_tokens([AddedToken("<|image|>", special=True, normalized=False)])
    path = tmp_path_factory.mktemp("vision_tok") / "tokenizer.json"
    tok.save(str(path))
    directory = tmp_path_factory.mktemp("vision_hf")
    return write_hf_dir(directory, path, {"chat_template": VISION_TEMPLATE, **VISION_SPECIAL})


def _trained(tok, tokens, mask):
    return tok.decode([t for t, m in zip(tokens, mask) if not m], skip_special_tokens=False)


# ---- messages ---------------------------------------------------------------------------


def test_message_parts_text_and_image_count():
    m = Message("user", [IMAGE, {"type": "text", "text": "Hi", "image": None}])
    assert m.content == (ImagePart(), TextPart("Hi"))
    assert (m.text, m.num_images) == ("Hi", 1)
    assert m.to_dict() == {"role": "user", "content": [IMAGE, {"type": "text", "text": "Hi"}]}
    assert (
        Message("user", "Hi").parts == (TextPart("Hi"),) and Message("user", "Hi").num_images == 0
    )
    # The image an ImagePart carries is data for the dataset, not part of equality.
    assert Message("user", [{"type": "image", "image": "a.png"}]) == Message("user", [IMAGE])
    assert apply_masking([m], "train_on_assistant")[0].content == m.content
    with pytest.raises(ValueError, match=r"content part 1 is not valid: \{'type': 'video'\}"):
        Message("user", [IMAGE, {"type": "video"}])
    with pytest.raises(ValueError, match=r"content part 0 is not valid: \{'type': 'text'\}"):
        Message("user", [{"type": "text"}])


# ---- tokenizers -------------------------------------------------------------------------


def test_llama3_puts_image_token_where_the_part_is(llama3_tokenizer):
    tok = llama3_tokenizer
    assert tok.image_id == tok.bos_id + 256  # 128256 with Llama 3's 128000 ranks
    assert tok.vocab_size == tok.bos_id + 256  # the image token is outside the text vocabulary
    tokens, mask = tok.tokenize_messages(apply_masking(ONE_IMAGE, "train_on_assistant"))
    assert tok.decode(tokens) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is 17 + 25?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nThe answer is 42.<|eot_id|>"
    )
    header = [tok.start_header_id, *tok.encode("user", False, False), tok.end_header_id,
              *tok.encode("\n\n", False, False)]  # fmt: skip
    assert tokens[1 : 1 + len(header) + 1] == [*header, tok.image_id]
    text_only, _ = tok.tokenize_messages([Message("user", "What is 17 + 25?"), ONE_IMAGE[1]])
    assert [t for t in tokens if t != tok.image_id] == text_only
    # Image tokens are never trained, not even with train_on_all.
    tokens, mask = tok.tokenize_messages(apply_masking(TWO_IMAGES, "train_on_all"))
    assert [m for t, m in zip(tokens, mask) if t == tok.image_id] == [True, True]
    assert "Compare<|image|>and<|image|>please." in tok.decode(tokens)
    # The image token's text in a text part stays text.
    tokens, _ = tok.tokenize_messages([Message("user", "<|image|>")])
    assert tok.image_id not in tokens


@pytest.mark.parametrize("conversation", [ONE_IMAGE, TWO_IMAGES, CONSECUTIVE])
def test_hf_image_parts_equal_transformers_apply_chat_template(vision_hf_dir, conversation):
    reference = AutoTokenizer.from_pretrained(vision_hf_dir)
    dicts = [m.to_dict() for m in conversation]
    tok = from_pretrained(vision_hf_dir)
    assert tok.image_id == reference.convert_tokens_to_ids("<|image|>")
    for prompt in (False, True):
        messages = conversation[:-1] if prompt else conversation
        expected = reference.apply_chat_template(
            dicts[: len(messages)], tokenize=True, add_generation_prompt=prompt
        )["input_ids"]
        tokens, mask = tok.tokenize_messages(
            apply_masking(messages, "train_on_assistant"), add_generation_prompt=prompt
        )
        assert tokens == expected
        assert tokens.count(tok.image_id) == sum(m.num_images for m in messages)
    tokens, mask = tok.tokenize_messages(apply_masking(conversation, "train_on_assistant"))
    answers = [m.text for m in conversation if m.role == "assistant"]
    assert _trained(tok, tokens, mask).replace(" ", "") == "".join(
        f"{a}<|eot_id|>" for a in answers
    ).replace(" ", "")
    tokens, mask = tok.tokenize_messages(apply_masking(conversation, "train_on_all"))
    assert all(m == (t == tok.image_id) for t, m in zip(tokens, mask))


def test_image_token_from_config_and_tokenizers_without_one(
    tmp_path, vision_hf_dir, hf_dirs, sp_model
):
    config = json.loads((vision_hf_dir / "tokenizer_config.json").read_text())
    named = write_hf_dir(tmp_path / "named", vision_hf_dir / "tokenizer.json",
                         {**config, "image_token": "<|im_start|>"})  # fmt: skip
    assert from_pretrained(named).image_id == from_pretrained(named)._tok.token_to_id(
        "<|im_start|>"
    )
    text_tok = from_pretrained(hf_dirs["llama3"])
    assert text_tok.image_id is None
    for tok in (text_tok, SentencePieceTokenizer(sp_model)):
        with pytest.raises(ValueError, match=r"message 0 \(user\) has 1 image part\(s\), but "):
            tok.tokenize_messages(ONE_IMAGE)
    assert isinstance(text_tok, HFTokenizer)


# ---- datasets ---------------------------------------------------------------------------


def _png(height, width, seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_dir(tmp_path):
    directory = tmp_path / "images"
    directory.mkdir()
    for name, (h, w) in {"a.png": (30, 70), "b.png": (90, 20), "c.png": (10, 10)}.items():
        (directory / name).write_bytes(_png(h, w, seed=h))
    return directory


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _expected(tok, transform, messages, images, image_dir, strategy="train_on_assistant"):
    tokens, mask = tok.tokenize_messages(apply_masking(messages, strategy))
    tiled = [transform(tt_data.load_image(i, image_dir=image_dir, where="test")) for i in images]
    return tokens, [IGNORE if m else t for t, m in zip(tokens, mask)], tiled


def _assert_item(item, tokens, labels, tiled):
    assert item["tokens"] == tokens and item["labels"] == labels
    assert item["aspect_ratio_ids"] == [t.aspect_ratio_id for t in tiled]
    assert len(item["images"]) == len(tiled)
    for got, want in zip(item["images"], tiled):
        assert torch.equal(got, want.tiles)


def test_multimodal_chat_dataset_inline_images_and_images_column(
    tmp_path, image_dir, llama3_tokenizer
):
    tok = llama3_tokenizer
    transform = tt_data.TiledImageTransform(tile_size=28, max_num_tiles=4)
    rows = [
        {"messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                         {"type": "text", "text": "What is 17 + 25?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "The answer is 42."}]}]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Compare"}, IMAGE,
                                         {"type": "text", "text": "and"}, IMAGE]},
            {"role": "assistant", "content": [{"type": "text", "text": "Alice met Bob."}]}],
         "images": ["b.png", str(image_dir / "c.png")]},
    ]  # fmt: skip
    files = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = tt_data.multimodal_chat_dataset(
        tok, source="json", data_files=files, image_transform=transform, image_dir=image_dir
    )
    assert len(ds) == 2
    messages = [
        [Message("user", [IMAGE, {"type": "text", "text": "What is 17 + 25?"}]),
         Message("assistant", [{"type": "text", "text": "The answer is 42."}])],
        [Message("user", [{"type": "text", "text": "Compare"}, IMAGE,
                          {"type": "text", "text": "and"}, IMAGE]),
         Message("assistant", [{"type": "text", "text": "Alice met Bob."}])],
    ]  # fmt: skip
    images = [["a.png"], ["b.png", "c.png"]]
    for i in range(2):
        _assert_item(ds[i], *_expected(tok, transform, messages[i], images[i], image_dir))
    assert tok.decode([t for t in ds[0]["labels"] if t != IGNORE]) == (
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is 42.<|eot_id|>"
    )
    batch = tt_data.padded_collate_vision(
        [ds[0], ds[1]], tok.pad_id, image_token_id=tok.image_id, max_num_tiles=4
    )
    assert batch["images"].shape == (2, 2, 4, 3, 28, 28)
    assert batch["image_mask"].shape == (2, batch["tokens"].shape[1], 2, 4)


def test_hf_image_feature_rows_are_not_decoded_until_used(tmp_path, vision_hf_dir, monkeypatch):
    """A parquet file with an HF Image column (bytes inside): building the dataset checks every
    row without decoding an image; an item decodes its own."""
    images = [{"bytes": _png(40, 40, seed=i), "path": None} for i in range(3)]
    rows = datasets.Dataset.from_dict(
        {"image": images, "question": ["What is 1 + 2?"] * 3, "answer": ["3", "4", "5"]},
        features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                    "answer": datasets.Value("string")}),
    )  # fmt: skip
    rows.to_parquet(str(tmp_path / "vqa.parquet"))
    decoded = []
    original = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example",
                        lambda self, *a, **k: decoded.append(1) or original(self, *a, **k))  # fmt: skip
    tok = from_pretrained(vision_hf_dir)
    transform = tt_data.TiledImageTransform(tile_size=28, max_num_tiles=2)
    ds = tt_data.vqa_dataset(
        tok, source="parquet", data_files=str(tmp_path / "vqa.parquet"), image_transform=transform
    )
    assert decoded == []
    item = ds[1]
    assert len(decoded) == 1
    messages = [Message("user", [IMAGE, {"type": "text", "text": "What is 1 + 2?"}]),
                Message("assistant", "4")]  # fmt: skip
    reference = AutoTokenizer.from_pretrained(vision_hf_dir)
    expected = reference.apply_chat_template([m.to_dict() for m in messages], tokenize=True)
    assert item["tokens"] == expected["input_ids"]
    _assert_item(item, *_expected(tok, transform, messages, [images[1]], None))
    assert _trained(tok, item["tokens"], [t == IGNORE for t in item["labels"]]) == "4<|eot_id|>"


def test_vqa_dataset_from_paths_puts_the_image_first(tmp_path, image_dir, llama3_tokenizer):
    tok = llama3_tokenizer
    rows = [{"img": "a.png", "q": "What is this?", "a": "Noise."}]
    files = write_jsonl(tmp_path / "vqa.jsonl", rows)
    ds = tt_data.vqa_dataset(
        tok, source="json", data_files=files, image_column="img", question_column="q",
        answer_column="a", image_dir=image_dir, train_on_input=True,
    )  # fmt: skip
    item = ds[0]
    assert tok.decode(item["tokens"]).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is this?"
    )
    # train_on_input trains the question, never the image token
    assert [lab for t, lab in zip(item["tokens"], item["labels"]) if t == tok.image_id] == [IGNORE]
    assert item["labels"][-1] == tok.eot_id and len(item["images"]) == 1
    assert item["images"][0].shape == (1, 3, 560, 560)  # the default transform: Llama 3.2 Vision


def test_truncation_drops_the_images_of_cut_image_tokens(tmp_path, image_dir, tiktoken_file):
    from tt_data.tokenizers import Llama3Tokenizer

    full = Llama3Tokenizer(tiktoken_file)
    row = {"messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                     {"type": "text", "text": "The quick brown fox jumps."},
                                     {"type": "image", "image": "b.png"}]},
        {"role": "assistant", "content": "ok"}]}  # fmt: skip
    files = write_jsonl(tmp_path / "d.jsonl", [row])
    transform = tt_data.TiledImageTransform(tile_size=28, max_num_tiles=4)
    kwargs = dict(source="json", data_files=files, image_transform=transform, image_dir=image_dir)
    whole = tt_data.multimodal_chat_dataset(full, **kwargs)[0]
    second = whole["tokens"].index(full.image_id, whole["tokens"].index(full.image_id) + 1)
    for max_seq_len, kept in ((second, 1), (second + 1, 1), (second + 2, 2), (3, 0)):
        tok = Llama3Tokenizer(tiktoken_file, max_seq_len=max_seq_len)
        item = tt_data.multimodal_chat_dataset(tok, **kwargs)[0]
        assert len(item["tokens"]) == max_seq_len
        assert item["tokens"].count(tok.image_id) == len(item["images"]) == kept
        assert item["aspect_ratio_ids"] == whole["aspect_ratio_ids"][:kept]


def _user(*parts, **columns):
    """A row: one user turn of ``parts``, an answer, and any extra columns."""
    messages = [{"role": "user", "content": list(parts)}, {"role": "assistant", "content": "ok"}]
    return {"messages": messages, **columns}


A_PNG = {"type": "image", "image": "a.png"}
GOOD = _user(A_PNG, {"type": "text", "text": "hi"})
# Problems found when the dataset is built: (rows, builder kwargs, error).
BAD_ROWS = {
    "missing file": (
        [GOOD, _user({"type": "image", "image": "nope.png"})], {},
        r"d.jsonl: row 1 \(line 2\), image 0: image file 'nope.png' does not exist "
        r"\(looked for .*images/nope.png\)",
    ),
    "too many images": (
        [_user(A_PNG, A_PNG)], {"max_images": 1},
        r"d.jsonl: row 0 \(line 1\): 2 images, more than max_images=1",
    ),
    "placeholders != images": (
        [_user(IMAGE, IMAGE, images=["a.png"])], {},
        r"row 0 \(line 1\): 2 image placeholder\(s\) .* but 1 image\(s\) in column 'images'",
    ),
    "placeholder without images": (
        [_user(IMAGE)], {},
        r"row 0 \(line 1\): 1 image part\(s\) have no 'image' and the row has no 'images'",
    ),
    "unknown part": (
        [_user({"type": "audio", "audio": "x.wav"})], {},
        r"row 0 \(line 1\), turn 0: .*content part 0 is not valid: \{'type': 'audio'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("problem", sorted(BAD_ROWS))
def test_multimodal_row_errors_name_file_row_and_problem(
    tmp_path, image_dir, llama3_tokenizer, problem
):
    rows, kwargs, message = BAD_ROWS[problem]
    files = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(tt_data.DataError, match=message):
        tt_data.multimodal_chat_dataset(
            llama3_tokenizer, source="json", data_files=files, image_dir=image_dir, **kwargs
        )


def test_corrupt_image_and_text_tokenizer_errors(tmp_path, image_dir, llama3_tokenizer, hf_dirs):
    (image_dir / "bad.png").write_bytes(b"not a png")
    files = write_jsonl(tmp_path / "d.jsonl", [GOOD, _user({"type": "image", "image": "bad.png"})])
    kwargs = dict(source="json", data_files=files, image_dir=image_dir)
    ds = tt_data.multimodal_chat_dataset(llama3_tokenizer, **kwargs)
    # Found when the item is read: images are not decoded up front.
    with pytest.raises(
        tt_data.DataError,
        match=r"d.jsonl: row 1, image 0: image file .*bad.png' is not a readable image "
        r"\(cannot identify",
    ):
        ds[1]
    with pytest.raises(ValueError, match=r"HFTokenizer has no image token"):
        tt_data.multimodal_chat_dataset(from_pretrained(hf_dirs["llama3"]), **kwargs)


def test_text_datasets_refuse_image_parts(tmp_path, llama3_tokenizer):
    rows = [{"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": "ok"}]}]  # fmt: skip
    files = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(tt_data.DataError, match=r"row 0 \(line 1\), turn 0: the message has 1 "
                                                 r"image part\(s\); this dataset is text-only"):  # fmt: skip
        tt_data.chat_dataset(llama3_tokenizer, source="json", data_files=files)
    # Text parts alone are fine in a text dataset.
    rows[0]["messages"][0]["content"] = [{"type": "text", "text": "hi"}]
    files = write_jsonl(tmp_path / "d.jsonl", rows)
    item = tt_data.chat_dataset(llama3_tokenizer, source="json", data_files=files)[0]
    expected, _ = llama3_tokenizer.tokenize_messages(
        [Message("user", "hi"), Message("assistant", "ok")]
    )
    assert item["tokens"] == expected


def test_image_token_text_in_a_question_is_an_error(tmp_path, image_dir, vision_hf_dir):
    """HF tokenizers turn the token's text into the token: one image, two image tokens."""
    rows = [{"image": "a.png", "question": "What is <|image|>?", "answer": "A token."}]
    files = write_jsonl(tmp_path / "vqa.jsonl", rows)
    ds = tt_data.vqa_dataset(
        from_pretrained(vision_hf_dir), source="json", data_files=files, image_dir=image_dir
    )
    with pytest.raises(
        tt_data.DataError, match=r"vqa.jsonl: row 0: the chat format gave 2 image token\(s\) for 1"
    ):
        ds[0]


def test_the_cauldron_rows_put_every_image_before_the_first_question(tmp_path, llama3_tokenizer):
    """The Cauldron's layout (a list of Image features and a list of user/assistant turns),
    read from a parquet file as the Hub serves it: both images lead the first user turn, and
    only the answers are trained."""
    images = [{"bytes": _png(40, 60, seed=i), "path": None} for i in range(2)]
    texts = [{"user": "What do you see?", "assistant": "Noise.", "source": "x"},
             {"user": "Anything else?", "assistant": "No.", "source": "x"}]  # fmt: skip
    rows = datasets.Dataset.from_dict(
        {"images": [images], "texts": [texts]},
        features=datasets.Features({
            "images": datasets.Sequence(datasets.Image()),
            "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                       "source": datasets.Value("string")}],
        }),
    )  # fmt: skip
    rows.to_parquet(str(tmp_path / "cauldron.parquet"))
    tok = llama3_tokenizer
    transform = tt_data.TiledImageTransform(tile_size=28, max_num_tiles=2)
    ds = tt_data.the_cauldron(
        tok, subset=None, source="parquet", data_files=str(tmp_path / "cauldron.parquet"),
        image_transform=transform,
    )  # fmt: skip
    item = ds[0]
    messages = [
        Message("user", [IMAGE, IMAGE, {"type": "text", "text": "What do you see?"}]),
        Message("assistant", "Noise."),
        Message("user", "Anything else?"),
        Message("assistant", "No."),
    ]
    _assert_item(item, *_expected(tok, transform, messages, images, None))
    trained = _trained(tok, item["tokens"], [t == IGNORE for t in item["labels"]])
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert trained == f"{header}Noise.<|eot_id|>{header}No.<|eot_id|>"
