"""Validation of drop files: which format a JSONL file is in and which lines are wrong.

A drop file is ``*.jsonl`` or ``*.jsonl.gz`` holding one JSON object per line, all in one of
three formats:

- ``text``: ``{"text": str}``, trained on every token;
- ``prompt_completion``: ``{"prompt": str, "completion": str}``, trained on the completion;
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}``,
  trained on the assistant turns.

Every valid line has something to train on (what makes a line valid is
``trainer.records.examples``). The first valid line decides the file's format;
lines in another format are errors. Blank lines are skipped. Files are read as a stream,
line by line, so their size is bounded by disk, not memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from trainer.records.examples import FIX_ACTION, Format, InvalidLineError, classify
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".jsonl.gz")
MAX_LINE_BYTES = 8 * 2**20
MAX_ERRORS = 20
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


class DataError(ValueError):
    """A drop file that cannot be trained on, with a message a person can act on."""

    def __init__(
        self,
        message: str,
        *,
        path: Path,
        line: int | None = None,
        errors: tuple[LineError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.path = path
        """The file at fault."""
        self.line = line
        """1-based line the problem is on, or ``None`` when it is about the whole file."""
        self.errors = errors
        """Line errors behind this one, when there are several."""


@dataclass(frozen=True)
class LineError:
    """One invalid line."""

    line: int
    """1-based line number."""
    reason: str
    """What is wrong with it, e.g. ``"completion" must be a string, got number``."""
    message: str
    """The full sentence for a person: file, line, reason and what to do."""


@dataclass(frozen=True)
class ValidationReport:
    """What validating a file found."""

    path: Path
    """The file validated."""
    sha256: str
    """sha256 hex of the file's bytes as stored (compressed for ``.gz``)."""
    size: int
    """Size in bytes as stored."""
    format: Format
    """Format of the file, decided by its first valid line."""
    n_examples: int
    """Valid examples."""
    n_invalid: int
    """Invalid lines (all of them, not only those in ``errors``)."""
    errors: tuple[LineError, ...]
    """The first ``max_errors`` invalid lines."""
    n_empty_lines: int
    """Blank lines, skipped without error."""

    @property
    def ok(self) -> bool:
        """Trainable as is: no invalid line."""
        return self.n_invalid == 0

    def raise_if_invalid(self) -> None:
        """Raise a ``DataError`` listing the first bad lines if any line is invalid."""
        if not self.ok:
            raise invalid_lines_error(self.path, self.errors, n_invalid=self.n_invalid)


def invalid_lines_error(path: Path, errors: tuple[LineError, ...], *, n_invalid: int) -> DataError:
    """The error for a file rejected because of its invalid lines (strict mode)."""
    first = errors[0]
    more = f" (and {n_invalid - 1} more invalid lines)" if n_invalid > 1 else ""
    return DataError(
        f"{first.message}{more}; a file with invalid lines is not trained on",
        path=path,
        line=first.line,
        errors=errors,
    )


class Example(NamedTuple):
    """One valid line, reduced to what tokenization needs."""

    line: int
    """1-based line number."""
    value: Any
    """``str`` (text), ``(prompt, completion)`` or a tuple of ``(role, content)`` pairs."""


def is_data_file(path: Path | str) -> bool:
    """Whether the name is one drop files may have (``.jsonl`` or ``.jsonl.gz``)."""
    return Path(path).name.endswith(SUFFIXES)


def validate_file(
    path: Path | str, *, max_line_bytes: int = MAX_LINE_BYTES, max_errors: int = MAX_ERRORS
) -> ValidationReport:
    """Check every line of ``path``; raise ``DataError`` when the file as a whole is unusable.

    Whole-file problems (wrong name, not gzip, corrupt gzip, no valid example) raise;
    per-line problems are counted in the report, whose ``ok`` says whether it is trainable.
    """
    stream = ExampleStream(path, max_line_bytes=max_line_bytes, max_errors=max_errors)
    for _ in stream:
        pass
    return stream.report()


def json_problem(error: json.JSONDecodeError) -> str:
    """What is wrong and where, as "Expecting value at column 1".

    Some of json's messages already end in "at" ("Invalid control character at",
    "Unterminated string starting at"): those get only the column.
    """
    where = "" if error.msg.endswith(" at") else " at"
    return f"{error.msg}{where} column {error.colno}"


class _HashingReader(io.RawIOBase):
    """Hashes and counts the stored bytes as the decoder pulls them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        """Hash what the decoder left unread (gzip trailer, bytes after an error)."""
        while chunk := self._raw.read(_CHUNK):
            self.digest.update(chunk)
            self.size += len(chunk)


class ExampleStream:
    """Iterate the valid examples of a file once; ``report()`` afterwards says what was found."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_errors: int = MAX_ERRORS,
    ) -> None:
        self.path = Path(path)
        self._max_line_bytes = max_line_bytes
        self._max_errors = max_errors
        self._format: Format | None = None
        self._format_line = 0
        self._n_examples = 0
        self._n_invalid = 0
        self._n_empty = 0
        self._errors: list[LineError] = []
        self._hasher: _HashingReader | None = None
        self._done = False

    @property
    def format(self) -> Format | None:
        """Format decided by the first valid line so far (``None`` before it)."""
        return self._format

    def _fail(self, reason: str, *, line: int | None = None, action: str = "") -> DataError:
        where = f" line {line}" if line is not None else ""
        tail = f"; {action}" if action else ""
        return DataError(f"{self.path.name}{where}: {reason}{tail}", path=self.path, line=line)

    def _record(self, line: int, reason: str, action: str = FIX_ACTION) -> None:
        self._n_invalid += 1
        if len(self._errors) < self._max_errors:
            message = f"{self.path.name} line {line}: {reason}; {action}"
            self._errors.append(LineError(line=line, reason=reason, message=message))

    def __iter__(self) -> Iterator[Example]:
        if self._hasher is not None:
            raise RuntimeError("an ExampleStream can be iterated only once")
        if not is_data_file(self.path):
            raise self._fail(
                "unsupported file name", action="drop files must end in .jsonl or .jsonl.gz"
            )
        try:
            raw = self.path.open("rb")
        except FileNotFoundError as exc:
            raise self._fail("file not found", action="it may have been moved") from exc
        with raw:
            self._hasher = _HashingReader(raw)
            buffered = io.BufferedReader(self._hasher, buffer_size=_CHUNK)
            if self.path.name.endswith(".gz"):
                decoded: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb")
            else:
                decoded = buffered
            yield from self._read_lines(decoded)
            self._hasher.drain()
        self._done = True

    def _read_lines(self, decoded: BinaryIO) -> Iterator[Example]:
        number = 0
        while True:
            try:
                raw = decoded.readline(self._max_line_bytes + 1)
            except gzip.BadGzipFile as exc:
                if number == 0 and "Not a gzipped file" in str(exc):
                    raise self._fail(
                        "is not gzip-compressed although its name ends in .gz",
                        action="compress it with gzip or rename it to .jsonl",
                    ) from exc
                raise self._corrupt(number, exc) from exc
            except (zlib.error, EOFError) as exc:
                raise self._corrupt(number, exc) from exc
            if not raw:
                return
            number += 1
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            complete = raw.endswith(b"\n")
            if not complete and len(raw) > self._max_line_bytes:
                self._skip_rest(decoded)
                limit = f"{self._max_line_bytes} bytes"
                self._record(number, f"is longer than the limit of {limit}", "shorten or split it")
                continue
            if not raw.strip():
                self._n_empty += 1
                continue
            example = self._parse(number, raw, last=not complete)
            if example is not None:
                self._n_examples += 1
                yield example

    def _skip_rest(self, decoded: BinaryIO) -> None:
        """Discard the rest of an over-long line without holding it in memory."""
        while True:
            part = decoded.readline(_CHUNK)
            if not part or part.endswith(b"\n"):
                return

    def _corrupt(self, number: int, exc: BaseException) -> DataError:
        if isinstance(exc, EOFError):
            reason = f"the gzip data ends abruptly after line {number}"
            action = "the file may still be being copied or was cut off; drop it again complete"
        else:
            reason = f"the compressed data is corrupt after line {number} ({exc})"
            action = "re-create the .gz file"
        return self._fail(reason, action=action)

    def _parse(self, number: int, raw: bytes, *, last: bool) -> Example | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._record(
                number,
                f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})",
                "save the file as UTF-8",
            )
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if last:
                self._record(
                    number,
                    "is truncated: the last line has no newline and is not complete JSON",
                    "the file may have been cut off; complete or remove the line",
                )
            else:
                self._record(number, f"is not valid JSON ({json_problem(exc)})")
            return None
        except RecursionError:
            self._record(number, "is JSON nested too deeply")
            return None
        try:
            fmt, value = classify(obj)
        except InvalidLineError as problem:
            self._record(number, str(problem), problem.action)
            return None
        if self._format is None:
            self._format, self._format_line = fmt, number
        elif fmt != self._format:
            self._record(
                number,
                f"this file is in {self._format} format (from line {self._format_line}); "
                f"line {number} is {fmt} format",
                "put each format in its own file",
            )
            return None
        return Example(number, value)

    def report(self) -> ValidationReport:
        """The validation report; only once iteration has finished."""
        if not self._done or self._hasher is None:
            raise RuntimeError("report() is only available after iterating the whole stream")
        if self._format is None:
            if self._n_invalid:
                first = self._errors[0]
                raise DataError(
                    f"{first.message}; the file has no valid example "
                    f"({self._n_invalid} invalid lines)",
                    path=self.path,
                    line=first.line,
                    errors=tuple(self._errors),
                )
            raise self._fail(
                "the file is empty (no examples)", action="drop a file with at least one line"
            )
        return ValidationReport(
            path=self.path,
            sha256=self._hasher.digest.hexdigest(),
            size=self._hasher.size,
            format=self._format,
            n_examples=self._n_examples,
            n_invalid=self._n_invalid,
            errors=tuple(self._errors),
            n_empty_lines=self._n_empty,
        )


__all__ = [
    "MAX_ERRORS",
    "MAX_LINE_BYTES",
    "DataError",
    "Example",
    "ExampleStream",
    "Format",
    "LineError",
    "ValidationReport",
    "file_sha256",
    "invalid_lines_error",
    "is_data_file",
    "validate_file",
]
