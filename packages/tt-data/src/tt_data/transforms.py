"""Row transforms: one raw dataset row (a dict) -> list of ``Message`` (or a chosen/rejected pair).

Every transform takes ``(row, index)`` so a bad row is reported by its index, with the
columns that the row does have. ``column_map`` maps the name a transform expects to the
dataset's column name, e.g. ``{"input": "question", "output": "answer"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tt_data.messages import Message

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "{input_block}### Response:\n"
)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_response": "tool"}  # fmt: skip


class RowTransform:
    """Base: resolves ``column_map`` and reads fields with errors that name the row."""

    def __init__(self, column_map: Mapping[str, str] | None = None) -> None:
        self.column_map = dict(column_map or {})

    def column(self, name: str) -> str:
        """The dataset column holding the field this transform calls ``name``."""
        return self.column_map.get(name, name)

    def field(self, row: Mapping[str, Any], name: str, index: int, kind: type = str) -> Any:
        """``row[column(name)]``, checked to exist and to be a ``kind``."""
        col = self.column(name)
        value = row.get(col)
        if value is None:
            present = sorted(k for k, v in row.items() if v is not None)
            mapped = f" (mapped from {name!r} by column_map)" if col != name else ""
            raise KeyError(
                f"row {index}: missing column {col!r}{mapped}; the row has columns {present}. "
                f"Pass column_map={{{name!r}: '<your column>'}} to use another column."
            )
        if not isinstance(value, kind):
            raise TypeError(
                f"row {index}: column {col!r} must be a {kind.__name__}, got "
                f"{type(value).__name__}: {value!r:.80}"
            )
        return value

    def optional(self, row: Mapping[str, Any], name: str, index: int) -> str:
        """A string field that may be absent or empty."""
        return self.field(row, name, index) if row.get(self.column(name)) is not None else ""


class InputOutputToMessages(RowTransform):
    """``{"input", "output"}`` -> user, assistant; an optional prompt template wraps the input.

    ``prompt_template`` is a ``str.format`` pattern over the row's (mapped) fields, e.g.
    ``"Summarize this dialogue:\\n{input}\\n---\\nSummary:\\n"``.
    """

    def __init__(
        self,
        column_map: Mapping[str, str] | None = None,
        prompt_template: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(column_map)
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        prompt = self.field(row, "input", index)
        if self.prompt_template:
            prompt = self.prompt_template.format(input=prompt)
        messages = [Message("user", prompt), Message("assistant", self.field(row, "output", index))]
        return with_system_prompt(messages, self.system_prompt)


class AlpacaToMessages(RowTransform):
    """Alpaca rows ``{"instruction", "input" (may be empty), "output"}`` in Alpaca's prompt."""

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        instruction = self.field(row, "instruction", index)
        extra = self.optional(row, "input", index)
        prompt = ALPACA_PROMPT.format(
            with_input=", paired with an input that provides further context" if extra else "",
            instruction=instruction,
            input_block=f"### Input:\n{extra}\n\n" if extra else "",
        )
        return [Message("user", prompt), Message("assistant", self.field(row, "output", index))]


class ShareGPTToMessages(RowTransform):
    """``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` -> messages;
    ``system_prompt`` replaces the rows' own system turns."""

    def __init__(
        self, column_map: Mapping[str, str] | None = None, system_prompt: str | None = None
    ) -> None:
        super().__init__(column_map)
        self.system_prompt = system_prompt

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        turns = self.field(row, "conversations", index, list)
        messages = []
        for t, turn in enumerate(turns):
            speaker = turn.get("from")
            if speaker not in SHAREGPT_ROLES:
                raise ValueError(
                    f"row {index}: turn {t} has 'from'={speaker!r}; expected one of "
                    f"{sorted(SHAREGPT_ROLES)}"
                )
            messages.append(_message(SHAREGPT_ROLES[speaker], turn.get("value"), index, t))
        return with_system_prompt(_non_empty(messages, index), self.system_prompt)


class OpenAIToMessages(ShareGPTToMessages):
    """``{"messages": [{"role", "content"}]}`` -> messages; ``system_prompt`` replaces the
    rows' own system turns."""

    def __call__(self, row: Mapping[str, Any], index: int) -> list[Message]:
        turns = self.field(row, "messages", index, list)
        return with_system_prompt(
            _non_empty(_openai_turns(turns, index), index), self.system_prompt
        )


class ChosenRejectedToMessages(RowTransform):
    """Preference rows -> (chosen conversation, rejected conversation).

    Accepts ``{"prompt": str, "chosen": str, "rejected": str}`` or ``chosen``/``rejected``
    as OpenAI-style message lists holding the whole conversation (HH-RLHF "standard" form).
    ``system_prompt`` replaces the rows' own system turns.
    """

    def __init__(
        self, column_map: Mapping[str, str] | None = None, system_prompt: str | None = None
    ) -> None:
        super().__init__(column_map)
        self.system_prompt = system_prompt

    def __call__(self, row: Mapping[str, Any], index: int) -> tuple[list[Message], list[Message]]:
        if isinstance(row.get(self.column("chosen")), list):
            chosen = _openai_turns(self.field(row, "chosen", index, list), index)
            rejected = _openai_turns(self.field(row, "rejected", index, list), index)
        else:
            prompt = [Message("user", self.field(row, "prompt", index))]
            chosen = prompt + [Message("assistant", self.field(row, "chosen", index))]
            rejected = prompt + [Message("assistant", self.field(row, "rejected", index))]
        return (
            with_system_prompt(_non_empty(chosen, index), self.system_prompt),
            with_system_prompt(_non_empty(rejected, index), self.system_prompt),
        )


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` with ``system_prompt`` (if given) in place of their system turns, as
    context: the same words in every row, never trained."""
    if not system_prompt:
        return messages
    turns = [m for m in messages if m.role != "system"]
    return [Message("system", system_prompt, masked=True, context=True), *turns]


def _openai_turns(turns: list[Any], index: int) -> list[Message]:
    return [_message(t.get("role"), t.get("content"), index, i) for i, t in enumerate(turns)]


def _message(role: Any, content: Any, index: int, turn: int) -> Message:
    try:
        return Message(role, content)
    except (TypeError, ValueError) as e:
        raise type(e)(f"row {index}, turn {turn}: {e}") from e


def _non_empty(messages: list[Message], index: int) -> list[Message]:
    if not messages:
        raise ValueError(f"row {index}: the conversation has no messages")
    return messages
