"""One line of a drop: which of the three formats it is in, or why it is in none.

- ``text``: ``{"text": str}``, trained on every token;
- ``prompt_completion``: ``{"prompt": str, "completion": str}``, trained on the completion;
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}``,
  trained on the assistant turns.

Every valid line has something to train on: a text or completion that is empty, or a
conversation without an assistant turn that has content, is an invalid line.

Keys beyond a format's own (``"id"``, ``"source"``, ``"name"`` on a message, ...) are allowed
and ignored, as real exports carry them. Reading whole files is ``trainer.records.formats``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

Format = Literal["text", "prompt_completion", "messages"]
ROLES = frozenset({"system", "user", "assistant"})
FIX_ACTION = "fix or remove the line"
"""What to do about an invalid line, unless its problem says better."""


class InvalidLineError(Exception):
    """Why one parsed line is not a valid example, and what to do about it."""

    def __init__(self, reason: str, action: str = FIX_ACTION) -> None:
        super().__init__(reason)
        self.action = action


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "empty list" if not value else "list"
    return {str: "string", dict: "object", type(None): "null"}.get(type(value), "value")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidLineError(f"{what} must be a string, got {_type_name(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads accepts lone surrogate escapes such as "\ud800"; tokenizers cannot.
        raise InvalidLineError(f"{what} contains an invalid \\u escape (lone surrogate)") from exc
    return value


def classify(obj: Any) -> tuple[Format, Any]:
    """The format of one parsed line and its value for ``Example.value``; InvalidLineError
    says why it is a valid line of no format."""
    if not isinstance(obj, dict):
        raise InvalidLineError(f'is a JSON {_type_name(obj)}, not an object like {{"text": "..."}}')
    has_messages = "messages" in obj
    has_pc = "prompt" in obj or "completion" in obj
    has_text = "text" in obj
    if has_messages + has_pc + has_text > 1:
        found = ", ".join(
            f'"{k}"' for k in ("text", "prompt", "completion", "messages") if k in obj
        )
        raise InvalidLineError(f"mixes the keys of several formats ({found}); keep one format")
    if has_text:
        text = _string(obj["text"], '"text"')
        if not text.strip():
            raise InvalidLineError('"text" is empty')
        return "text", text
    if has_pc:
        for key in ("prompt", "completion"):
            if key not in obj:
                raise InvalidLineError(f'is missing "{key}" (a prompt line needs both keys)')
        prompt = _string(obj["prompt"], '"prompt"')
        completion = _string(obj["completion"], '"completion"')
        if not completion:
            raise InvalidLineError('"completion" is empty')
        return "prompt_completion", (prompt, completion)
    if has_messages:
        return "messages", _messages(obj["messages"])
    keys = ", ".join(f'"{k}"' for k in list(obj)[:5]) or "none"
    raise InvalidLineError(
        f'has no "text", "prompt"/"completion" or "messages" key (keys found: {keys})'
    )


def _messages(messages: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise InvalidLineError(f'"messages" must be a non-empty list, got {_type_name(messages)}')
    turns = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise InvalidLineError(f"message {index} must be an object, got {_type_name(message)}")
        if "role" not in message or "content" not in message:
            raise InvalidLineError(f'message {index} needs "role" and "content"')
        role = message["role"]
        if role not in ROLES:
            shown = json.dumps(role) if isinstance(role, str) else _type_name(role)
            raise InvalidLineError(
                f'message {index} has unknown role {shown}; use "system", "user" or "assistant"'
            )
        turns.append((role, _string(message["content"], f'message {index} "content"')))
    _require_a_reply(turns)
    return tuple(turns)


def _require_a_reply(turns: list[tuple[str, str]]) -> None:
    """Only assistant turns are trained on: a line without one would teach nothing."""
    if any(role == "assistant" and content.strip() for role, content in turns):
        return
    if any(role == "assistant" for role, _ in turns):
        reason = 'every "assistant" message is empty'
    else:
        reason = 'has no "assistant" message'
    raise InvalidLineError(
        f"{reason}, so there is nothing to train on (only assistant turns are trained on)",
        "add the assistant's reply or remove the line",
    )
