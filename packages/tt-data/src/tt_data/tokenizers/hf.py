"""Hugging Face ``tokenizer.json`` backend whose chat format is the model's own jinja template.

Rendering the ``chat_template`` from ``tokenizer_config.json`` (or ``chat_template.jinja``)
with the globals transformers provides makes any HF model's chat format work without
per-family code, and the ids equal ``AutoTokenizer.apply_chat_template(..., tokenize=True)``.

How the mask is found: the template is rendered once for the whole conversation and tokenized
with character offsets. Message ``k`` occupies the characters between the ends of the
renderings of ``messages[:k]`` and ``messages[:k+1]`` (the common prefix with the full text,
which tolerates templates that append eos only at the very end, like Phi-3). An assistant
message is trained from the start of its content (after the role header, found by rendering
the prefix with ``add_generation_prompt=True``, or else by locating the content text) to the
end of its segment, so its end-of-turn token is trained. A token is trained when its
characters overlap a trained span. This works for templates without ``{% generation %}``
tags, which is most of them.

Images: a message's image parts go to the template as ``{"type": "image"}`` parts (Llama 3.2
Vision's template renders each as ``<|image|>``). ``image_id`` is the id of the
``image_token`` that tokenizer_config.json names, else of an added ``<|image|>`` token, else
None.

``chat_format="torchtune_qwen2"`` instead gives the ids torchtune 0.6.1's Qwen2/Qwen2.5
tokenizers give (no template: ``<|im_start|>{role}\\n`` and the content encoded on their own,
``<|im_end|>\\n`` after every turn but a final answer, then eos), so a torchtune config trains
on the same tokens in tt.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from tt_data.messages import ImagePart, Message
from tt_data.tokenizers.protocol import (
    PromptTemplate,
    TruncatingTokenizer,
    check_prompt_template,
    template_segments,
)

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
DEFAULT_IMAGE_TOKEN = "<|image|>"
CHAT_FORMATS = (None, "torchtune_qwen2")  # None: the model's own chat template


class _GenerationTag(Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` and render its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    # transformers overrides jinja's tojson so non-ASCII text is not escaped.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the same sandboxed environment transformers uses."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _token_content(value: Any) -> str | None:
    """Special tokens are stored as a string or as an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _overlaps(tok: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = tok
    end = max(end, start + 1)  # zero-width tokens count at their position
    return any(start < hi and end > lo for lo, hi in spans)


class HFTokenizer(TruncatingTokenizer):
    """A ``tokenizers.Tokenizer`` plus the chat template and special tokens of its config."""

    def __init__(
        self,
        tokenizer_json: str | os.PathLike,
        *,
        config: dict[str, Any] | None = None,
        chat_template: str | None = None,
        generation_config: dict[str, Any] | None = None,
        max_seq_len: int | None = None,
        chat_format: str | None = None,
        eos_token: str | None = None,
        prompt_template: PromptTemplate | None = None,
    ) -> None:
        if chat_format not in CHAT_FORMATS:
            raise ValueError(
                f"chat_format {chat_format!r} is not valid for HFTokenizer; expected one of "
                f"{list(CHAT_FORMATS)} (null: the model's chat template)"
            )
        self.prompt_template = check_prompt_template(prompt_template)
        if self.prompt_template and chat_format is None:
            raise ValueError(
                "prompt_template needs chat_format='torchtune_qwen2': with the model's own "
                "chat template, write the text into the messages instead"
            )
        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._source = str(tokenizer_json)
        self.chat_format = chat_format
        self.config = dict(config or {})
        if eos_token is not None:  # e.g. torchtune's Qwen2.5 ends every sample with <|im_end|>
            self.config["eos_token"] = eos_token
        self.special_tokens = {k: _token_content(self.config.get(k)) for k in SPECIAL_TOKEN_KEYS}
        self.bos_id = self._id_of("bos_token")
        eos_id = self._id_of("eos_token")
        if eos_id is None:
            raise ValueError(
                f"{self._source}: tokenizer_config.json names no eos_token found in the "
                f"vocabulary (eos_token={self.config.get('eos_token')!r}); set eos_token to a "
                "token of tokenizer.json"
            )
        self.eos_id: int = eos_id
        pad_id = self._id_of("pad_token")
        # Padding is always masked out of the loss, so eos is a safe stand-in for a missing pad.
        self.pad_id: int = self.eos_id if pad_id is None else pad_id
        self.stop_tokens = self._stop_tokens(generation_config or {})
        self.image_token, self.image_id = self._image_token()
        self.max_seq_len = max_seq_len
        self.num_truncated = 0
        self._template = compile_chat_template(chat_template) if chat_template else None

    def _id_of(self, key: str) -> int | None:
        content = self.special_tokens.get(key)
        return None if content is None else self._tok.token_to_id(content)

    def _image_token(self) -> tuple[str | None, int | None]:
        """The config's ``image_token`` if the vocabulary has it, else an added ``<|image|>``."""
        named = _token_content(self.config.get("image_token"))
        if named is not None and self._tok.token_to_id(named) is not None:
            return named, self._tok.token_to_id(named)
        added = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        if DEFAULT_IMAGE_TOKEN in added:
            return DEFAULT_IMAGE_TOKEN, added[DEFAULT_IMAGE_TOKEN]
        return None, None

    def _stop_tokens(self, generation_config: dict[str, Any]) -> list[int]:
        extra = generation_config.get("eos_token_id") or []
        extra = [extra] if isinstance(extra, int) else list(extra)
        return sorted({self.eos_id, *extra})

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text`` (special-token strings in it become their ids)."""
        ids = self._plain(text)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The chat template's text for ``messages``."""
        if self._template is None:
            raise ValueError(
                f"{self._source}: no chat_template in tokenizer_config.json or "
                "chat_template.jinja; pass chat_template= or use a tokenizer with one"
            )
        return self._template.render(
            messages=[m.to_dict() for m in messages],
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **{k: v for k, v in self.special_tokens.items() if v is not None},
        )

    def _format_messages(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        if self.chat_format == "torchtune_qwen2":
            return self._torchtune_qwen2_layout(messages, add_generation_prompt)
        text = self.render(messages, add_generation_prompt)
        encoding = self._tok.encode(text, add_special_tokens=False)
        spans = self._trained_spans(messages, text, encoding)
        mask = [not _overlaps(offset, spans) for offset in encoding.offsets]
        return list(encoding.ids), mask

    def _torchtune_qwen2_layout(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        """torchtune's Qwen2 layout: a final answer has no <|im_end|>\\n of its own; eos (with
        the last turn's mask) ends the sample instead."""
        start, end = self._special_id("<|im_start|>"), self._special_id("<|im_end|>")
        tokens: list[int] = []
        mask: list[bool] = []
        for i, message in enumerate(messages):
            if message.role not in ("system", "user", "assistant"):
                raise ValueError(
                    f"role {message.role!r} is not supported by chat_format 'torchtune_qwen2'; "
                    "use system, user or assistant"
                )
            ids = [start, *self._plain(f"{message.role}\n")]
            for segment in template_segments(message, self.prompt_template):
                ids += [self.image_id] if isinstance(segment, ImagePart) else self._plain(segment)
            if message.role != "assistant" or i != len(messages) - 1:
                ids += [end, *self._plain("\n")]
            tokens += ids
            mask += [message.masked] * len(ids)
        if add_generation_prompt:
            ids = [start, *self._plain("assistant\n")]
            return tokens + ids, mask + [True] * len(ids)
        return [*tokens, self.eos_id], [*mask, mask[-1]]

    def _plain(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _special_id(self, content: str) -> int:
        found = self._tok.token_to_id(content)
        if found is None:
            raise ValueError(
                f"{self._source}: chat_format {self.chat_format!r} needs the token "
                f"{content!r}, which this tokenizer does not have"
            )
        return found

    def _trained_spans(
        self, messages: list[Message], text: str, encoding: Any
    ) -> list[tuple[int, int]]:
        if not any(m.masked for m in messages):
            return [(0, len(text))]
        ends: dict[int, int] = {0: 0, len(messages): len(text)}

        def end_of(k: int) -> int:
            # Compare whole tokens, not characters: "<|endoftext|>" and "<|user|>" share "<|".
            if k not in ends:
                prefix_ids = self._tok.encode(self.render(messages[:k]), add_special_tokens=False)
                common = _common_prefix_len(prefix_ids.ids, encoding.ids)
                ends[k] = encoding.offsets[common - 1][1] if common else 0
            return ends[k]

        spans = []
        for k, message in enumerate(messages):
            if message.masked:
                continue
            lo, hi = end_of(k), end_of(k + 1)
            if message.role == "assistant":
                lo = self._content_start(messages, k, text, lo, hi)
            spans.append((lo, hi))
        return spans

    def _content_start(self, messages: list[Message], k: int, text: str, lo: int, hi: int) -> int:
        """Where assistant message ``k``'s content starts, i.e. after its role header."""
        content = messages[k].text
        prompt = self.render(messages[:k], add_generation_prompt=True) if k else ""
        if k and text.startswith(prompt) and lo <= len(prompt) <= hi:
            rest = text[len(prompt) : hi]
            if rest.startswith(content) or rest.startswith(content.strip()):
                return len(prompt)
        for needle in (content, content.strip()):
            found = text.rfind(needle, lo, hi)
            if needle and found >= 0:
                return found
        raise ValueError(
            f"{self._source}: could not find assistant message {k} (content {content!r:.60}) "
            f"in the rendered chat template segment {text[lo:hi]!r:.200}; the template "
            "rewrites assistant content, so per-message masks cannot be derived from it"
        )

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike, max_seq_len: int | None = None, **kwargs: Any
    ) -> HFTokenizer:
        """Load ``tokenizer.json`` with ``tokenizer_config.json`` / ``chat_template.jinja``;
        ``kwargs`` are the constructor's (``chat_format``, ``eos_token``,
        ``prompt_template``)."""
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        return cls(
            path / "tokenizer.json",
            config=config,
            chat_template=template,
            generation_config=_read_json(path / "generation_config.json"),
            max_seq_len=max_seq_len,
            **kwargs,
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
