"""SentencePiece backend (Llama 2, Mistral, Gemma model files) with two chat formats.

``chat_format="mistral"``: ``<s>[INST] {user} [/INST] {assistant}</s>[INST] ...`` with the
system prompt prepended to the first user turn (Mistral/Llama 2 instruct style).
``chat_format="gemma"``: ``<bos><start_of_turn>user\\n{user}<end_of_turn>\\n<start_of_turn>
model\\n{assistant}<end_of_turn>\\n`` (needs those pieces in the model, as Gemma's has).
Each segment is encoded separately, so masks follow message boundaries exactly.

``chat_format="torchtune_plain" | "torchtune_llama2" | "torchtune_mistral"`` give the ids
torchtune 0.6.1 gives for the same messages with its SentencePiece tokenizers (no template,
``Llama2ChatTemplate``, ``MistralChatTemplate``), so a torchtune config trains on the same
tokens in tt (see :func:`torchtune_layout`). ``chat_format="torchtune_phi3"`` does the same for
torchtune's Phi-3 mini tokenizer: Phi-3's role tokens are not pieces of its SentencePiece
model but ids after them (``PHI3_SPECIAL_TOKENS``, as in its ``tokenizer.json``).
"""

from __future__ import annotations

import functools
import os

from tt_data.messages import Message
from tt_data.tokenizers.protocol import (
    PromptTemplate,
    TruncatingTokenizer,
    check_prompt_template,
    template_segments,
)

# (prompt text around a user turn, text after an assistant turn, end with eos id?)
CHAT_FORMATS: dict[str, tuple[str, str, bool]] = {
    "mistral": ("[INST] {content} [/INST]", "{content}", True),
    "gemma": (
        "<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
        "{content}<end_of_turn>\n",
        False,
    ),
}


# torchtune's per-role (prefix, suffix) text around a turn. Llama 2's system turn is folded
# into every later user turn, after "[INST] "; Mistral's template has no system turn.
TORCHTUNE_TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "torchtune_plain": {},
    "torchtune_llama2": {
        "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
        "user": ("[INST] ", " [/INST] "),
    },
    "torchtune_mistral": {"user": ("[INST] ", " [/INST] "), "assistant": ("", "")},
}
WHITESPACE = (" ", "\n", "\t", "\r", "\v")
# Phi-3 mini's added tokens (its tokenizer.json; torchtune's table), after the 32000 pieces.
PHI3_SPECIAL_TOKENS = {
    "<|endoftext|>": 32000,
    "<|assistant|>": 32001,
    "<|system|>": 32006,
    "<|end|>": 32007,
    "<|user|>": 32010,
}


class SentencePieceTokenizer(TruncatingTokenizer):
    """A SentencePiece model file with an instruct chat format."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_seq_len: int | None = None,
        chat_format: str = "mistral",
        prompt_template: PromptTemplate | None = None,
    ) -> None:
        import sentencepiece

        valid = [*CHAT_FORMATS, *TORCHTUNE_TEMPLATES, "torchtune_phi3"]
        if chat_format not in valid:
            raise ValueError(
                f"chat_format {chat_format!r} is not valid for SentencePieceTokenizer; "
                f"expected one of {sorted(valid)}"
            )
        self.prompt_template = check_prompt_template(prompt_template)
        if self.prompt_template and chat_format not in ("torchtune_plain", "torchtune_phi3"):
            raise ValueError(
                f"prompt_template needs chat_format 'torchtune_plain' or 'torchtune_phi3', "
                f"not {chat_format!r} (whose own template it would replace)"
            )
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.chat_format = chat_format
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        if self._sp.eos_id() < 0:
            raise ValueError(f"{path}: the SentencePiece model has no eos piece (eos_id=-1)")
        self.eos_id = self._sp.eos_id()
        # Padding is masked out of the loss, so eos is a safe stand-in for a missing pad.
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
        end_of_turn = self._sp.piece_to_id("<end_of_turn>")
        has_end_of_turn = end_of_turn != self._sp.unk_id()
        self.stop_tokens = sorted({self.eos_id, *([end_of_turn] if has_end_of_turn else [])})
        if chat_format == "torchtune_phi3":
            # Text still ends with the model's </s> (as in torchtune); generation also stops
            # at Phi-3's end of text and end of turn.
            ends = (PHI3_SPECIAL_TOKENS["<|endoftext|>"], PHI3_SPECIAL_TOKENS["<|end|>"])
            self.stop_tokens = sorted({self.eos_id, *ends})
        self.max_seq_len = max_seq_len
        self.num_truncated = 0

    @property
    def vocab_size(self) -> int:
        """Number of ids: the pieces, and Phi-3's added tokens after them."""
        if self.chat_format == "torchtune_phi3":
            return max(self._sp.get_piece_size(), max(PHI3_SPECIAL_TOKENS.values()) + 1)
        return self._sp.get_piece_size()

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, optionally wrapped in bos/eos."""
        ids = self._sp.encode(text)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        return self._sp.decode(list(ids))

    def _format_messages(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        if self.chat_format in TORCHTUNE_TEMPLATES:
            return self._torchtune_layout(messages, add_generation_prompt)
        if self.chat_format == "torchtune_phi3":
            return self._torchtune_phi3_layout(messages, add_generation_prompt)
        user_fmt, assistant_fmt, end_with_eos = CHAT_FORMATS[self.chat_format]
        tokens = [] if self.bos_id is None else [self.bos_id]
        mask = [True] * len(tokens)
        system = ""
        for message in messages:
            if message.role == "system":
                system = message.text + "\n\n"
                continue
            if message.role == "user":
                text = user_fmt.format(content=system + message.text)
                ids = self.encode(text, add_bos=False, add_eos=False)
                system = ""
            elif message.role == "assistant":
                text = assistant_fmt.format(content=message.text)
                ids = self.encode(text, add_bos=False, add_eos=end_with_eos)
            else:
                raise ValueError(
                    f"role {message.role!r} is not supported by the {self.chat_format!r} "
                    "SentencePiece chat format; use system, user or assistant"
                )
            tokens += ids
            mask += [message.masked] * len(ids)
        return tokens, mask

    def _torchtune_layout(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        """torchtune's layout: bos where a turn pair starts, eos after each answer (not when
        prompting for generation), each template and content segment encoded on its own with
        trailing spaces dropped, and the leading space SentencePiece adds suppressed inside
        a pair unless the text before ended with a space."""
        template = self.prompt_template or TORCHTUNE_TEMPLATES[self.chat_format]
        turns = _templated(messages, template, self.chat_format)
        tokens: list[int] = []
        mask: list[bool] = []
        starts_pair, after_space = True, False
        for role, masked, segments in turns:
            if starts_pair and self.bos_id is not None:
                tokens.append(self.bos_id)
                mask.append(masked)
            trim = not starts_pair and not after_space
            for segment in segments:
                ids = self._encode_segment(segment.rstrip(" "), trim)
                tokens += ids
                mask += [masked] * len(ids)
            after_space = segments[-1].endswith(" ") if segments else False
            starts_pair = role == "assistant"
            if starts_pair and not add_generation_prompt:
                tokens.append(self.eos_id)
                mask.append(masked)
        return tokens, mask

    def _torchtune_phi3_layout(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        """torchtune's Phi-3 layout: bos, then ``<|role|>\\n{content}<|end|>\\n`` per turn,
        the content without SentencePiece's leading space or trailing spaces; no eos."""
        newline = self._sp.encode("\n")
        tokens = [] if self.bos_id is None else [self.bos_id]
        mask = [messages[0].masked] * len(tokens)
        for message in messages:
            role = PHI3_SPECIAL_TOKENS.get(f"<|{message.role}|>")
            if role is None:
                raise ValueError(
                    f"role {message.role!r} is not supported by chat_format 'torchtune_phi3'; "
                    "use system, user or assistant"
                )
            content = [
                t
                for text in template_segments(message, self.prompt_template)
                for t in self._encode_segment(text.rstrip(" "), True)
            ]
            ids = [role, *newline, *content, PHI3_SPECIAL_TOKENS["<|end|>"], *newline]
            tokens += ids
            mask += [message.masked] * len(ids)
        if add_generation_prompt:
            ids = [PHI3_SPECIAL_TOKENS["<|assistant|>"], *newline]
            tokens, mask = tokens + ids, mask + [True] * len(ids)
        return tokens, mask

    def _encode_segment(self, text: str, trim_leading_space: bool) -> list[int]:
        if not trim_leading_space or not self._encodes_whitespace:
            return self._sp.encode(text)
        # "\n" + text, minus the newline's ids: the text without SentencePiece's leading space
        return self._sp.encode("\n" + text)[self._newline_ids :]

    @functools.cached_property
    def _encodes_whitespace(self) -> bool:
        return any(self._sp.encode(c) for c in WHITESPACE)

    @functools.cached_property
    def _newline_ids(self) -> int:
        return len(self._sp.encode("\n"))


def _templated(
    messages: list[Message], template: dict[str, tuple[str, str]], name: str
) -> list[tuple[str, bool, list[str]]]:
    """(role, masked, text segments) per turn, as torchtune's prompt template lays them out."""
    turns, system = [], []
    for m in messages:
        if m.role == "system" and name == "torchtune_llama2":
            prefix, suffix = template["system"]
            system = [prefix, m.text, suffix]
            continue
        if m.role == "system" and name == "torchtune_mistral":
            raise ValueError("torchtune's Mistral chat template has no system turn")
        if m.role not in ("system", "user", "assistant"):
            raise ValueError(f"role {m.role!r} is not supported by chat_format {name!r}")
        if m.role in template:
            prefix, suffix = template[m.role]
            middle = [*system, m.text] if m.role == "user" else [m.text]
            # torchtune leaves empty tags out (what the next turn's spacing depends on)
            segments = [text for text in (prefix, *middle, suffix) if text] or [""]
            turns.append((m.role, m.masked, segments))
        else:
            turns.append((m.role, m.masked, [m.text]))
    return turns
