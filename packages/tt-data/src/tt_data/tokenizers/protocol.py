"""The tokenizer protocol every backend implements, and the shared truncation logic.

``tokenize_messages`` returns ``(tokens, mask)`` where ``mask[i] is True`` means token ``i``
is NOT trained (its label becomes -100). Sequences longer than ``max_seq_len`` are cut to
``max_seq_len`` tokens whose last one is ``eos_id``, so a truncated sample still teaches the
model to stop. Truncations are counted in ``num_truncated`` and logged once per tokenizer.

Tokenizers of vision models also have ``image_id``: the token an ``ImagePart`` of a message
becomes (None when the tokenizer has no image token; a message with images is then an error).
Image tokens are never trained, whatever the masking: they are inputs, not predictions.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from tt_data.messages import ImagePart, Message

logger = logging.getLogger(__name__)


@runtime_checkable
class ModelTokenizer(Protocol):
    """What datasets, collators and recipes need from a tokenizer."""

    bos_id: int | None
    eos_id: int
    pad_id: int
    stop_tokens: list[int]
    max_seq_len: int | None

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, optionally wrapped in bos/eos."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        ...

    def tokenize_messages(
        self, messages: list[Message], *, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Token ids of a formatted conversation and the per-token mask (True = not trained)."""
        ...


def truncate(
    tokens: list[int], mask: list[bool], max_seq_len: int, eos_id: int
) -> tuple[list[int], list[bool]]:
    """Cut to ``max_seq_len`` tokens, making the last one ``eos_id`` (its mask is kept)."""
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if len(tokens) <= max_seq_len:
        return tokens, mask
    return tokens[: max_seq_len - 1] + [eos_id], mask[: max_seq_len - 1] + [mask[-1]]


class TruncatingTokenizer:
    """Mixin: turns a backend's ``_format_messages`` into a truncating ``tokenize_messages``."""

    eos_id: int
    max_seq_len: int | None
    num_truncated: int = 0
    image_id: int | None = None

    def _format_messages(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        raise NotImplementedError

    def tokenize_messages(
        self, messages: list[Message], *, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Token ids of the formatted conversation and its mask (True = not trained)."""
        if not messages:
            raise ValueError("tokenize_messages got an empty message list")
        if self.image_id is None:
            check_no_images(messages, type(self).__name__)
        tokens, mask = self._format_messages(messages, add_generation_prompt)
        if self.image_id is not None:
            mask = [m or t == self.image_id for t, m in zip(tokens, mask)]
        return self.truncate(tokens, mask)

    def truncate(self, tokens: list[int], mask: list[bool]) -> tuple[list[int], list[bool]]:
        """Apply ``max_seq_len`` (if set), counting and logging the first truncation."""
        if self.max_seq_len is None or len(tokens) <= self.max_seq_len:
            return tokens, mask
        if self.num_truncated == 0:
            logger.warning(
                "A sequence of %d tokens was truncated to max_seq_len=%d; further truncations "
                "are counted in tokenizer.num_truncated instead of being logged.",
                len(tokens),
                self.max_seq_len,
            )
        self.num_truncated += 1
        return truncate(tokens, mask, self.max_seq_len, self.eos_id)


# torchtune's prompt templates: role -> (text before the message, text after it).
PromptTemplate = dict[str, tuple[str, str]]


def check_prompt_template(template: object) -> PromptTemplate | None:
    """``template`` as {role: (prepend, append)}, or a ValueError naming what is wrong."""
    if template is None:
        return None
    roles = ("system", "user", "assistant", "ipython")
    if not isinstance(template, dict) or not all(
        role in roles
        and isinstance(tags, (list, tuple))
        and len(tags) == 2
        and all(isinstance(t, str) for t in tags)
        for role, tags in template.items()
    ):
        raise ValueError(
            f"prompt_template {template!r} is not valid: expected {{role: [text before, "
            f"text after]}} with roles from {list(roles)}"
        )
    return {role: (tags[0], tags[1]) for role, tags in template.items()}


def check_no_images(messages: list[Message], tokenizer: str) -> None:
    """A ValueError if a message has image parts: ``tokenizer`` has no image token."""
    for i, message in enumerate(messages):
        if message.num_images:
            raise ValueError(
                f"message {i} ({message.role}) has {message.num_images} image part(s), but "
                f"{tokenizer} has no image token; use the tokenizer of a vision model (one "
                "with '<|image|>', e.g. Llama 3.2 Vision's) or text-only messages"
            )


def template_segments(message: Message, template: PromptTemplate | None) -> list[str | ImagePart]:
    """The pieces torchtune encodes one by one for ``message``: its role's prepend tag, the
    content (each part of multimodal content on its own), the append tag (empty tags are left
    out, as torchtune does)."""
    if isinstance(message.content, str):
        content: list[str | ImagePart] = [message.content]
    else:
        content = [p if isinstance(p, ImagePart) else p.text for p in message.content]
    if not template or message.role not in template:
        return content
    prepend, append = template[message.role]
    return [s for s in (prepend, *content, append) if not isinstance(s, str) or s] or [""]
