"""Chat messages and the masking strategies that decide which tokens are trained.

A ``Message`` is one turn of a conversation. ``masked=True`` means the message's tokens are
excluded from the loss (their labels become -100); ``eot=False`` asks formats that support it
(Llama 3) to end the turn with end-of-message instead of end-of-turn (tool calls).

Content is a string, or (for images) a tuple of parts in HF/OpenAI order: ``TextPart`` and
``ImagePart``. Dicts ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` are accepted
and turned into parts. An ``ImagePart`` marks where an image sits; tokenizers render it as
the model's image token. It may carry the image itself (a path, bytes, a PIL image) for the
dataset that loads it; an ``ImagePart`` without one is a placeholder filled from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

Role = Literal["system", "user", "assistant", "tool", "ipython"]
VALID_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "ipython")
MaskingStrategy = Literal["train_on_all", "train_on_assistant", "train_on_last"]
MASKING_STRATEGIES: tuple[str, ...] = ("train_on_all", "train_on_assistant", "train_on_last")


@dataclass(frozen=True)
class TextPart:
    """Text inside a multimodal turn."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """Where an image sits in a turn. ``image`` (a path, bytes, an HF ``{"bytes", "path"}``
    dict or a PIL image) is for datasets to load; it takes no part in equality."""

    image: Any = field(default=None, compare=False, repr=False)


ContentPart = Union[TextPart, ImagePart]
PART_TYPES: tuple[str, ...] = ("text", "image")


def parse_part(part: Any, i: int) -> ContentPart:
    """A ``TextPart``/``ImagePart`` from a part or an HF/OpenAI dict (``i``: for errors).

    Keys with value None are ignored: ``datasets`` gives every part of a column the union of
    the keys (an image part read from JSON has ``"text": None``)."""
    if isinstance(part, (TextPart, ImagePart)):
        return part
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return TextPart(part["text"])
    if kind == "image":
        return ImagePart(part.get("image"))
    raise ValueError(
        f"content part {i} is not valid: {part!r:.80}; expected {{'type': 'text', 'text': str}}"
        f" or {{'type': 'image'}} (types {list(PART_TYPES)})"
    )


@dataclass(frozen=True)
class Message:
    """One conversation turn; ``masked`` turns are not trained on. A ``context`` turn (a system
    prompt the config adds to every row) is never trained, whatever the masking strategy.

    ``content`` is a str or a tuple of ``TextPart``/``ImagePart`` (a list, or HF/OpenAI part
    dicts, are converted)."""

    role: str
    content: str | tuple[ContentPart, ...]
    masked: bool = False
    eot: bool = True
    context: bool = False

    def __post_init__(self) -> None:
        if self.role not in VALID_ROLES:
            raise ValueError(
                f"Message role {self.role!r} is not valid; expected one of {VALID_ROLES}"
            )
        if isinstance(self.content, (list, tuple)):
            try:
                parts = tuple(parse_part(p, i) for i, p in enumerate(self.content))
            except ValueError as e:
                raise ValueError(f"Message content for role {self.role!r}: {e}") from None
            object.__setattr__(self, "content", parts)
        elif not isinstance(self.content, str):
            raise TypeError(
                f"Message content for role {self.role!r} must be a str, got "
                f"{type(self.content).__name__}: {self.content!r:.80} (or a list of "
                "{'type': 'text'|'image', ...} parts)"
            )

    @property
    def parts(self) -> tuple[ContentPart, ...]:
        """The content as parts (a str is one ``TextPart``)."""
        return (TextPart(self.content),) if isinstance(self.content, str) else self.content

    @property
    def text(self) -> str:
        """The content's text: the str itself, or the text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def num_images(self) -> int:
        """How many image parts the content has."""
        return sum(isinstance(p, ImagePart) for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        """The ``{"role", "content"}`` dict that chat templates expect (parts as HF dicts)."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        parts = [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
            for p in self.content
        ]
        return {"role": self.role, "content": parts}


def check_masking_strategy(strategy: str) -> None:
    """Raise a ValueError naming the valid strategies when ``strategy`` is unknown."""
    if strategy not in MASKING_STRATEGIES:
        raise ValueError(
            f"masking_strategy {strategy!r} is not valid; expected one of {MASKING_STRATEGIES}"
        )


def apply_masking(messages: list[Message], strategy: str) -> list[Message]:
    """Return ``messages`` with ``masked`` set by ``strategy``.

    ``train_on_all`` trains every message, ``train_on_assistant`` only assistant messages and
    ``train_on_last`` only the final assistant message (earlier answers become context).
    """
    check_masking_strategy(strategy)
    last_assistant = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)

    def trained(i: int, m: Message) -> bool:
        if strategy == "train_on_all":
            return True
        if strategy == "train_on_assistant":
            return m.role == "assistant"
        return i == last_assistant

    return [
        Message(
            m.role, m.content, masked=m.context or not trained(i, m), eot=m.eot, context=m.context
        )  # fmt: skip
        for i, m in enumerate(messages)
    ]
