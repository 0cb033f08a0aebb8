"""Llama 3 tokenizer: a TikToken BPE ranks file plus Llama 3's special tokens and chat format.

Chat layout (Meta's documented format)::

    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>...

A message with ``eot=False`` ends with ``<|eom_id|>`` (tool calls expecting a result). The
header of a message shares the message's mask, so an assistant turn trains its header,
content and ``<|eot_id|>``.

Images (Llama 3.2 Vision): an ``ImagePart`` becomes ``<|image|>``, the id right after the 256
special tokens (128256 with Llama 3's 128000 ranks), where the part is; each text part is
stripped as Meta's format does, so ``[image, "What is this?"]`` reads
``...<|end_header_id|>\\n\\n<|image|>What is this?<|eot_id|>``.
"""

from __future__ import annotations

import base64
import os

from tt_data.messages import ImagePart, Message
from tt_data.tokenizers.protocol import (
    PromptTemplate,
    TruncatingTokenizer,
    check_prompt_template,
    template_segments,
)

# Llama 3's pre-tokenization regex (contractions, letters, 1-3 digit groups, punctuation, spaces).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL_TOKENS = 256
IMAGE_TOKEN = "<|image|>"
_NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
# tiktoken encodes at most this many characters per call without pathological slowdowns.
_MAX_CHUNK_CHARS = 400_000


def llama3_special_tokens(num_base_tokens: int) -> dict[str, int]:
    """Llama 3's 256 special tokens, numbered right after the base ranks."""
    reserved = [
        f"<|reserved_special_token_{i}|>"
        for i in range(3, 3 + NUM_SPECIAL_TOKENS - len(_NAMED_SPECIAL))
    ]
    return {tok: num_base_tokens + i for i, tok in enumerate(_NAMED_SPECIAL + reserved)}


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file: one ``base64(token) rank`` pair per line."""
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(
                    f"{path}:{lineno}: expected 'base64_token rank', got {line[:80]!r}"
                )
            ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


class Llama3Tokenizer(TruncatingTokenizer):
    """TikToken BPE with Llama 3 special tokens and header/eot chat format.

    ``append_end_of_text`` ends a conversation (not a generation prompt) with
    ``<|end_of_text|>``, masked, as torchtune's Llama 3 tokenizer does; Llama 3's chat template
    ends at the last ``<|eot_id|>``. (A masked last token changes no loss.)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_seq_len: int | None = None,
        append_end_of_text: bool = False,
        prompt_template: PromptTemplate | None = None,
    ) -> None:
        import tiktoken

        self.prompt_template = check_prompt_template(prompt_template)

        ranks = load_tiktoken_ranks(path)
        self.special = llama3_special_tokens(len(ranks))
        self._text_vocab_size = len(ranks) + NUM_SPECIAL_TOKENS
        # Llama 3.2 Vision's image token comes after the text vocabulary (its own embedding row).
        self.image_id = self._text_vocab_size
        self._enc = tiktoken.Encoding(
            name=os.path.basename(str(path)),
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={**self.special, IMAGE_TOKEN: self.image_id},
        )
        self.bos_id = self.special["<|begin_of_text|>"]
        self.eos_id = self.special["<|end_of_text|>"]
        self.pad_id = self.special["<|finetune_right_pad_id|>"]
        self.eot_id = self.special["<|eot_id|>"]
        self.eom_id = self.special["<|eom_id|>"]
        self.start_header_id = self.special["<|start_header_id|>"]
        self.end_header_id = self.special["<|end_header_id|>"]
        self.python_tag_id = self.special["<|python_tag|>"]
        self.stop_tokens = [self.eos_id, self.eom_id, self.eot_id]
        self.max_seq_len = max_seq_len
        self.append_end_of_text = append_end_of_text
        self.num_truncated = 0

    @property
    def vocab_size(self) -> int:
        """Base ranks plus the 256 special tokens (``<|image|>``, ``image_id``, comes after)."""
        return self._text_vocab_size

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings in it are encoded as plain text."""
        ids: list[int] = []
        for start in range(0, len(text), _MAX_CHUNK_CHARS):
            chunk = text[start : start + _MAX_CHUNK_CHARS]
            ids.extend(self._enc.encode(chunk, allowed_special=set(), disallowed_special=()))
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``, special tokens shown unless ``skip_special_tokens``."""
        if skip_special_tokens:
            ids = [i for i in ids if i < self.bos_id]
        return self._enc.decode(list(ids))

    def _header(self, role: str) -> list[int]:
        return [
            self.start_header_id,
            *self.encode(role, add_bos=False, add_eos=False),
            self.end_header_id,
            *self.encode("\n\n", add_bos=False, add_eos=False),
        ]

    def _format_messages(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        tokens, mask = [self.bos_id], [True]
        for message in messages:
            body = self._header(message.role)
            if message.role == "ipython":
                body.append(self.python_tag_id)
            for segment in template_segments(message, self.prompt_template):
                if isinstance(segment, ImagePart):
                    body.append(self.image_id)
                else:
                    body += self.encode(segment.strip(), add_bos=False, add_eos=False)
            body.append(self.eot_id if message.eot else self.eom_id)
            tokens += body
            mask += [message.masked] * len(body)
        if add_generation_prompt:
            header = self._header("assistant")
            tokens += header
            mask += [True] * len(header)
        elif self.append_end_of_text:
            tokens.append(self.eos_id)
            mask.append(True)
        return tokens, mask
