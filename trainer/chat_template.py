"""Chat drops rendered with a tokenizer's own chat template, and their loss mask.

A Hugging Face tokenizer may come with a Jinja chat template (``tokenizer_config.json`` or
``chat_template.jinja``). Its conversations are rendered here exactly as transformers'
``apply_chat_template`` renders them (same sandbox, globals and filters), so a model trained
by traind sees at inference the format it was trained on.

The loss mask needs no ``{% generation %}`` markers (few templates have them). For assistant
message ``i`` the template renders the conversation before it with the generation prompt
(``P_i``) and the conversation up to and including it (``F_i``). When ``P_i`` is a prefix of
``F_i`` and ``F_i`` a prefix of the whole conversation, in text and in tokens, the reply's
tokens are ``F_i[len(P_i):]``: exactly what the model must generate after that prompt. The
targets run to the reply's end-of-turn token and stop there (what the template writes after
it, e.g. a newline, is the next turn's business). A conversation where any of this fails is
rejected with the reason (``ChatTemplateError``) rather than trained with a wrong mask.

Message contents may not contain the tokenizer's control tokens: the rendered text is
encoded with special tokens recognised (the template's markers must be), so a literal
``<|im_end|>`` in data would otherwise be read as a real one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)

Message = Mapping[str, str]
"""``{"role": ..., "content": ...}``, as chat templates expect."""

Encoded = tuple[list[int], list[int]]
"""Token ids of a rendered conversation and its loss mask (1 on targets)."""

_FIX = (
    "use a template whose rendering of a conversation starts with its rendering of every "
    'shorter conversation, or remove "chat_template" from tokenizer_config.json (and '
    "chat_template.jinja) to use traind's ChatML format"
)


class ChatTemplateError(ValueError):
    """A conversation that cannot be trained with the chat template; the message says why
    and what to do (a template that does not compile, at load time, raises it too)."""


class TemplateTokenizer(Protocol):
    """What rendering needs of a tokenizer (``trainer.tokenizer.Tokenizer`` provides it)."""

    @property
    def chat_template(self) -> str | None: ...

    @property
    def special_tokens(self) -> dict[str, str]: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def control_tokens(self) -> dict[int, str]: ...

    def encode_rendered_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body: templates written for
    transformers' assistant masks must compile (traind derives the mask without them)."""

    tags = {"generation"}  # noqa: RUF012 - the attribute jinja2 reads

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _TemplateDict:
    """``dict`` for templates, without attribute access that could reach the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace`` refusing underscore attributes (no way to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Same signature trick as Jinja's Namespace, so that namespace(self=...) still works.
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore attributes on a namespace: {name!r}"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (templates are untrusted code,
    hence the immutable sandbox)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def compile_template(source: str) -> jinja2.Template:
    """The compiled template; ``ChatTemplateError`` when it does not compile."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc


@dataclass(frozen=True)
class _Plan:
    """The texts of one conversation: whole, then ``(P_i, F_i)`` per assistant message."""

    full: str
    turns: tuple[tuple[int, str, str], ...]
    """``(message index, P_i, F_i)`` for each assistant message."""
    marked_ends: frozenset[int]
    """Message indexes of the replies whose text ends with a control token (and spaces)."""


class ChatRenderer:
    """A tokenizer's compiled chat template; renders conversations and derives loss masks."""

    def __init__(self, tokenizer: TemplateTokenizer) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        self._tokenizer = tokenizer
        self._template = compile_template(tokenizer.chat_template)
        self._variables = dict(tokenizer.special_tokens)
        controls = tokenizer.control_tokens
        self._control_ids = frozenset(controls)
        # Longest first, so a token wins over the shorter tokens it contains.
        self._control_strings = sorted(set(controls.values()), key=len, reverse=True)
        self._control_re = (
            re.compile("|".join(map(re.escape, self._control_strings)))
            if self._control_strings
            else None
        )
        self._eos_id = tokenizer.eos_id
        self._eos_name = controls.get(self._eos_id, f"id {self._eos_id}")

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        now: datetime | None = None,
    ) -> str:
        """The template's text for ``messages`` (what ``apply_chat_template`` renders).

        ``now`` is the time ``strftime_now`` gives the template (templates such as Llama
        3.1's print today's date); renderings compared with each other must share it.
        """
        clock = now or datetime.now()
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                # Passed as none like transformers does: templates test "tools is not none".
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                strftime_now=clock.strftime,
                **self._variables,
            )
        except Exception as exc:  # a template is code: any error is a rejection, not a crash
            raise ChatTemplateError(
                f"the chat template failed on this conversation: {exc}"
            ) from exc

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """Ids and loss mask of one conversation; ``ChatTemplateError`` if it cannot be."""
        result = self.encode_many([messages])[0]
        if isinstance(result, ChatTemplateError):
            raise result
        return result

    def encode_many(
        self, conversations: Sequence[Sequence[Message]]
    ) -> list[Encoded | ChatTemplateError]:
        """``encode`` over many conversations, their texts tokenized in one batch; each result
        is the ids and mask, or the error saying why that conversation is rejected."""
        now = datetime.now()  # one clock for all renderings: they must agree on the date
        plans = [self._plan_or_error(messages, now=now) for messages in conversations]
        ids = self._encoded_texts(plans)
        return [
            self._result(messages, plan, ids)
            for messages, plan in zip(conversations, plans, strict=True)
        ]

    def _plan_or_error(
        self, messages: Sequence[Message], *, now: datetime
    ) -> _Plan | ChatTemplateError:
        try:
            return self._plan(messages, now=now)
        except ChatTemplateError as exc:
            return exc

    def _encoded_texts(self, plans: list[_Plan | ChatTemplateError]) -> Iterator[list[int]]:
        """The ids of the plans' texts in order: whole, then ``P_i``, ``F_i`` per reply."""
        texts = [
            text
            for plan in plans
            if isinstance(plan, _Plan)
            for text in (plan.full, *(t for _, p, f in plan.turns for t in (p, f)))
        ]
        # Each distinct text once: a conversation ending with a reply renders it twice (as the
        # whole and as F_i), and drops repeat conversations.
        distinct = list(dict.fromkeys(texts))
        encoded = dict(zip(distinct, self._tokenizer.encode_rendered_batch(distinct), strict=True))
        return (encoded[text] for text in texts)

    def _result(
        self,
        messages: Sequence[Message],
        plan: _Plan | ChatTemplateError,
        ids: Iterator[list[int]],
    ) -> Encoded | ChatTemplateError:
        """One conversation's ids and mask, taking its texts' ids from ``ids``."""
        if isinstance(plan, ChatTemplateError):
            return plan
        full = next(ids)
        turns = [(index, next(ids), next(ids)) for index, _, _ in plan.turns]
        try:
            mask = self._mask(full, turns, plan=plan, messages=messages)
        except ChatTemplateError as exc:
            return exc
        return list(full), mask  # a copy: equal texts share their ids

    def _plan(self, messages: Sequence[Message], *, now: datetime) -> _Plan:
        """Render the texts of one conversation, checking its contents and the prefixes."""
        self._check_contents(messages)
        full = self.render(messages, now=now)
        turns = []
        marked: set[int] = set()
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:index], add_generation_prompt=True, now=now)
            upto = self.render(messages[: index + 1], now=now)
            _check_prefixes(prompt, upto, full, where=_turn_name(messages, index))
            turns.append((index, prompt, upto))
            if self._ends_with_marker(upto[len(prompt) :]):
                marked.add(index)
        return _Plan(full=full, turns=tuple(turns), marked_ends=frozenset(marked))

    def _ends_with_marker(self, reply: str) -> bool:
        """Whether ``reply`` ends with a control token, but for whitespace after it."""
        tail = reply.rstrip()
        return any(tail.endswith(token) for token in self._control_strings)

    def _check_contents(self, messages: Sequence[Message]) -> None:
        """No message may contain a control token: it would be read as the template's."""
        if self._control_re is None:
            return
        for index, message in enumerate(messages):
            found = self._control_re.search(message["content"])
            if found is not None:
                raise ChatTemplateError(
                    f"message {index + 1} ({message['role']}) contains {found.group()!r}, a "
                    "control token of the tokenizer; data may not contain the markers the chat "
                    "template writes, remove it or write it differently"
                )

    def _mask(
        self,
        full: list[int],
        turns: list[tuple[int, list[int], list[int]]],
        *,
        plan: _Plan,
        messages: Sequence[Message],
    ) -> list[int]:
        """1 on each assistant message's tokens up to its end-of-turn token, else 0."""
        mask = [0] * len(full)
        for index, prompt, upto in turns:
            where = _turn_name(messages, index)
            if upto[: len(prompt)] != prompt:
                raise ChatTemplateError(
                    f"the tokens of the conversation up to {where} do not start with those of "
                    "its prompt: the tokenizer merges the end of the prompt with the start of the "
                    "reply (e.g. a generation prompt that ends with a space, or a reply starting "
                    "with whitespace that joins the prompt's), so the reply would not be the "
                    "tokens generated after the prompt; use a template whose generation prompt "
                    "ends with a newline or a control token, or change the start of the reply"
                )
            if full[: len(upto)] != upto:
                raise ChatTemplateError(
                    f"the tokens of the conversation up to {where} change when the conversation "
                    "goes on: the tokenizer merges the end of that turn with what follows it; "
                    "change the end of the reply"
                )
            reply = upto[len(prompt) :]
            end = self._end_of_turn(reply, marked=index in plan.marked_ends, where=where)
            mask[len(prompt) : len(prompt) + end + 1] = [1] * (end + 1)
        return mask

    def _end_of_turn(self, reply: list[int], *, marked: bool, where: str) -> int:
        """Index in ``reply`` of the token that ends it (the last target).

        The last end-of-text token, as the tokenizer config names it (a chat model's config
        names its end-of-turn token). Failing that, when the reply's text ends with a control
        token, that token: some configs name a document end (Qwen base's ``<|endoftext|>``,
        Gemma's ``<eos>``) while the template ends turns with another marker (``<|im_end|>``,
        ``<end_of_turn>``). Without either the model would never learn to stop, so the
        conversation is rejected.
        """
        eos = [pos for pos, token in enumerate(reply) if token == self._eos_id]
        if eos:
            return eos[-1]
        controls = [pos for pos, token in enumerate(reply) if token in self._control_ids]
        if marked and controls:
            return controls[-1]
        raise ChatTemplateError(
            f"the chat template renders {where} without an end-of-turn token (the tokenizer's "
            f"end-of-text token is {self._eos_name!r}), so the model would never learn to stop; "
            "use a template that ends assistant turns with it, or set eos_token in "
            "tokenizer_config.json to the template's end-of-turn token"
        )


def _check_prefixes(prompt: str, upto: str, full: str, *, where: str) -> None:
    """``ChatTemplateError`` unless ``prompt`` starts ``upto`` and ``upto`` starts ``full``."""
    if not upto.startswith(prompt):
        raise ChatTemplateError(
            f"the chat template renders the prompt of {where} (the conversation before it, "
            "with the generation prompt) as text that its rendering with that message does not "
            f"start with, e.g. because the template strips or rewrites earlier turns; {_FIX}"
        )
    if not full.startswith(upto):
        raise ChatTemplateError(
            f"the chat template renders the conversation up to {where} as text that its "
            "rendering of the whole conversation does not start with, e.g. because the "
            "template strips or rewrites earlier turns or writes something after the last "
            f"message; {_FIX}"
        )


def _turn_name(messages: Sequence[Message], index: int) -> str:
    """E.g. ``assistant message 2 (message 5 of 5)``."""
    number = sum(m["role"] == "assistant" for m in messages[: index + 1])
    return f"assistant message {number} (message {index + 1} of {len(messages)})"
