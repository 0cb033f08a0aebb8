"""Chat messages and the masking strategies that decide which tokens are trained.

A ``Message`` is one turn of a conversation. ``masked=True`` means the message's tokens are
excluded from the loss (their labels become -100); ``eot=False`` asks formats that support it
(Llama 3) to end the turn with end-of-message instead of end-of-turn (tool calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant", "tool", "ipython"]
VALID_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "ipython")
MaskingStrategy = Literal["train_on_all", "train_on_assistant", "train_on_last"]
MASKING_STRATEGIES: tuple[str, ...] = ("train_on_all", "train_on_assistant", "train_on_last")


@dataclass(frozen=True)
class Message:
    """One conversation turn; ``masked`` turns are not trained on. A ``context`` turn (a system
    prompt the config adds to every row) is never trained, whatever the masking strategy."""

    role: str
    content: str
    masked: bool = False
    eot: bool = True
    context: bool = False

    def __post_init__(self) -> None:
        if self.role not in VALID_ROLES:
            raise ValueError(
                f"Message role {self.role!r} is not valid; expected one of {VALID_ROLES}"
            )
        if not isinstance(self.content, str):
            raise TypeError(
                f"Message content for role {self.role!r} must be a str, got "
                f"{type(self.content).__name__}: {self.content!r:.80}"
            )

    def to_dict(self) -> dict[str, str]:
        """The ``{"role", "content"}`` dict that chat templates expect."""
        return {"role": self.role, "content": self.content}


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
