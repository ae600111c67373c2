"""Turning validated examples into training sequences.

Text examples are packed into one stream of ``text + eos`` cut into overlapping windows
of ``block_size + 1`` tokens (every token a target). Prompt/completion and chat examples
give one sequence each, with targets only on the completion (and eos) or the assistant
turns (and their end marker). Chat examples use the tokenizer's chat template when it has
one (``trainer.chat_template``), else traind's ChatML rendering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.arrays import ArrayWriters
from trainer.records.formats import DataError, Example, ExampleStream, LineError
from trainer.tokenizer import Tokenizer

if TYPE_CHECKING:
    from trainer.chat_template import ChatRenderer

_ENCODE_BATCH = 2048


def tokenize_stream(
    stream: ExampleStream,
    writers: ArrayWriters,
    *,
    tokenizer: Tokenizer,
    block_size: int,
    holdout: Holdout | None = None,
) -> dict[str, Any]:
    """Tokenize every example into ``writers``, or into ``holdout.writers`` when held out.

    Returns the counts of the training part, with those of the held-out part under
    ``"holdout"`` when a holdout was asked for.
    """
    examples = iter(stream)
    sinks = [_Sink(writers)]
    if holdout is not None:
        sinks.append(_Sink(holdout.writers))
    for chunk in iter(lambda: list(islice(examples, _ENCODE_BATCH)), []):
        parts = [chunk]
        if holdout is not None:
            held = [holdout.holds(e) for e in chunk]
            parts = [
                [e for e, h in zip(chunk, held, strict=True) if not h],
                [e for e, h in zip(chunk, held, strict=True) if h],
            ]
        for sink, part in zip(sinks, parts, strict=True):
            if part:
                sink.add(
                    part,
                    stream.format,
                    tokenizer=tokenizer,
                    block_size=block_size,
                    path=stream.path,
                )
    counts: dict[str, Any] = sinks[0].finish()
    if holdout is not None:
        counts["holdout"] = sinks[1].finish()
    return counts


@dataclass(frozen=True)
class Holdout:
    """Where held-out examples go, and which ones are held out."""

    writers: ArrayWriters
    """The held-out part's arrays."""
    fraction: float
    """Share of examples held out, chosen by a hash of their content."""

    def holds(self, example: Example) -> bool:
        return is_held_out(example.value, self.fraction)


def is_held_out(value: object, fraction: float) -> bool:
    """Whether an example with this content is held out: a pure function of the content,
    so a line repeated in later drops is held out there too and never leaks into training."""
    if fraction <= 0:
        return False
    text = json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    digest = hashlib.blake2b(text, digest_size=8, person=b"traind-holdout").digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


class _Sink:
    """One set of arrays being filled (the training part, or the held-out part)."""

    def __init__(self, writers: ArrayWriters) -> None:
        self.writers = writers
        self.counts = {"n_examples": 0, "n_truncated": 0, "n_no_target": 0}
        self._packer: _TextPacker | None = None

    def add(
        self,
        chunk: list[Example],
        fmt: str,
        *,
        tokenizer: Tokenizer,
        block_size: int,
        path: Path,
    ) -> None:
        self.counts["n_examples"] += len(chunk)
        if fmt == "text":
            self._packer = self._packer or _TextPacker(self.writers, block_size)
            self._packer.add([e.value for e in chunk], [e.line for e in chunk], tokenizer=tokenizer)
        elif fmt == "prompt_completion":
            _add_sequences(
                self.writers, _render_prompt(chunk, tokenizer, block_size + 1), self.counts
            )
        else:
            rendered = _render_chat(chunk, tokenizer, block_size + 1, path=path)
            _add_sequences(self.writers, rendered, self.counts)

    def finish(self) -> dict[str, int]:
        if self._packer is not None:
            self._packer.finish()
        return {**self.counts, **self.writers.totals()}


class _TextPacker:
    """Concatenates ``text + eos`` examples and cuts windows of ``block_size + 1`` tokens."""

    def __init__(self, writers: ArrayWriters, block_size: int) -> None:
        self._w = writers
        self._bs = block_size
        self._n_tokens = 0
        self._next = 0  # index of the next window to emit
        # Start offset and line of the examples the next windows may still overlap.
        self._ex_starts = np.zeros(0, dtype=np.int64)
        self._ex_lines = np.zeros(0, dtype=np.int32)

    def add(self, texts: list[str], lines: list[int], *, tokenizer: Tokenizer) -> None:
        encoded = tokenizer.encode_batch(texts)
        eos = [tokenizer.eos_id]
        sizes = np.fromiter((len(ids) + 1 for ids in encoded), np.int64, len(encoded))
        total = int(sizes.sum())
        flat = np.fromiter(chain.from_iterable(ids + eos for ids in encoded), np.int64, total)
        offsets = self._n_tokens + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self._ex_starts = np.concatenate((self._ex_starts, offsets))
        self._ex_lines = np.concatenate((self._ex_lines, np.asarray(lines, dtype=np.int32)))
        self._w.append_tokens(flat, np.ones(total, dtype=np.uint8))
        self._n_tokens += total
        full = (self._n_tokens - 1) // self._bs if self._n_tokens > self._bs else 0
        self._emit(np.arange(self._next, full, dtype=np.int64), self._bs + 1)

    def finish(self) -> None:
        # Window i exists while it holds at least 2 tokens: i * bs < n_tokens - 1.
        count = -(-(self._n_tokens - 1) // self._bs) if self._n_tokens > 1 else 0
        if count > self._next:
            last = np.arange(self._next, count, dtype=np.int64)
            self._emit(last, self._n_tokens - last * self._bs)

    def _emit(self, windows: np.ndarray, lengths: np.ndarray | int) -> None:
        if not len(windows):
            return
        starts = windows * self._bs
        lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), starts.shape)
        first = np.searchsorted(self._ex_starts, starts, side="right") - 1
        last = np.searchsorted(self._ex_starts, starts + lengths - 1, side="right") - 1
        lines = np.stack((self._ex_lines[first], self._ex_lines[last]), axis=1)
        self._w.append_sequences(starts, lengths, lengths - 1, lines)
        self._next = int(windows[-1]) + 1
        # Forget examples that end before the next window starts.
        keep = max(int(np.searchsorted(self._ex_starts, self._next * self._bs, "right")) - 1, 0)
        self._ex_starts, self._ex_lines = self._ex_starts[keep:], self._ex_lines[keep:]


def _render_prompt(
    chunk: list[Example], tokenizer: Tokenizer, cap: int
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """``prompt + completion + eos``, targets on completion and eos, trimmed to ``cap``."""
    encoded = tokenizer.encode_batch([t for e in chunk for t in e.value])
    eos = [tokenizer.eos_id]
    for i, example in enumerate(chunk):
        prompt, completion = encoded[2 * i], encoded[2 * i + 1]
        truncated = len(prompt) + len(completion) + 1 > cap
        if not truncated:
            ids = prompt + completion + eos
        elif len(completion) + 1 <= cap:
            # Keep the end of the prompt: the part nearest the completion matters most.
            prompt = prompt[len(prompt) - (cap - len(completion) - 1) :]
            ids = prompt + completion + eos
        else:
            # The completion alone does not fit: no eos, the text did not end here.
            prompt, ids = [], completion[:cap]
        yield ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt)), example.line, truncated


def _render_chat(
    chunk: list[Example], tokenizer: Tokenizer, cap: int, *, path: Path
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """Chat examples, with the tokenizer's chat template when it has one, else ChatML."""
    renderer = tokenizer.chat_renderer  # compiled once per tokenizer, None without a template
    if renderer is not None:
        return _render_chat_template(chunk, renderer, cap, path=path)
    return _render_chatml(chunk, tokenizer, cap)


def _render_chatml(
    chunk: list[Example], tokenizer: Tokenizer, cap: int
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """ChatML turns; targets on assistant content and its end marker; cut right at ``cap``."""
    marks = tokenizer.chat_ids
    end, newline = list(marks.end), list(marks.newline)
    contents = iter(tokenizer.encode_batch([c for e in chunk for _, c in e.value]))
    for example in chunk:
        ids: list[int] = []
        mask: list[int] = []
        for role, _ in example.value:
            header, content = list(marks.headers[role]), next(contents)
            target = int(role == "assistant")
            ids += header + content + end + newline
            mask += [0] * len(header) + [target] * (len(content) + len(end)) + [0] * len(newline)
        truncated = len(ids) > cap
        yield ids[:cap], mask[:cap], example.line, truncated


def _render_chat_template(
    chunk: list[Example], renderer: ChatRenderer, cap: int, *, path: Path
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """The tokenizer's chat template; targets on assistant turns to their end-of-turn token,
    cut right at ``cap``. A conversation the template cannot train rejects the file."""
    # Imported here: jinja2 is needed only by tokenizers with a chat template.
    from trainer.chat_template import ChatTemplateError

    conversations = [[{"role": r, "content": c} for r, c in e.value] for e in chunk]
    for example, result in zip(chunk, renderer.encode_many(conversations), strict=True):
        if isinstance(result, ChatTemplateError):
            raise _rejected_line(path, line=example.line, reason=str(result)) from result
        ids, mask = result
        yield ids[:cap], mask[:cap], example.line, len(ids) > cap


def _rejected_line(path: Path, *, line: int, reason: str) -> DataError:
    """The error that rejects the file for one line, worded like validation's line errors."""
    message = f"{path.name} line {line}: {reason}"
    error = LineError(line=line, reason=reason, message=message)
    return DataError(
        f"{message}; a file with a conversation that cannot be trained is not trained on",
        path=path,
        line=line,
        errors=(error,),
    )


def _add_sequences(
    writers: ArrayWriters,
    rendered: Iterator[tuple[list[int], list[int], int, bool]],
    counts: dict[str, int],
) -> None:
    """Append one row per rendered example (rows under 2 tokens are dropped)."""
    all_ids: list[int] = []
    all_mask: list[int] = []
    lengths: list[int] = []
    targets: list[int] = []
    lines: list[int] = []
    for ids, mask, line, truncated in rendered:
        counts["n_truncated"] += truncated
        n_targets = sum(mask) - mask[0] if mask else 0
        counts["n_no_target"] += n_targets == 0
        if len(ids) < 2:
            continue
        all_ids += ids
        all_mask += mask
        lengths.append(len(ids))
        targets.append(n_targets)
        lines.append(line)
    if not lengths:
        return
    sizes = np.asarray(lengths, dtype=np.int64)
    starts = writers.n_tokens + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    writers.append_tokens(np.asarray(all_ids, np.int64), np.asarray(all_mask, np.uint8))
    line_pairs = np.repeat(np.asarray(lines, dtype=np.int32)[:, None], 2, axis=1)
    writers.append_sequences(starts, sizes, np.asarray(targets), line_pairs)
