"""The append-only event log ``state/events.jsonl``: its writer and its readers.

One JSON object per line, each with ``event`` and an ISO-8601 ``timestamp``. Lines are
written with a single ``write`` on an ``O_APPEND`` descriptor and fsynced, so readers
(the API's SSE stream, ``tail -f``) never see half a line from a live writer and a
crash loses at most the line being written. A line's 1-based number is its stable id.

Readers: :meth:`EventLog.read_backwards` (newest first, for the last event of a kind) and
:class:`EventTail` (what was appended since the last read, for those that follow the log).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.records.storage import as_disk_full

log = logging.getLogger(__name__)

LOSS_DIGITS = 6
READ_BYTES = 1 << 20
"""Bytes an :class:`EventTail` reads at most per call (the rest follows at the next)."""

FileKey = tuple[int, int]
"""(device, inode): which file the log's path names, to notice it replaced."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return None if math.isnan(value) else str(value)
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class EventLog:
    """Appends events to a JSONL file; safe to share between processes."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        return self.emit_many([(event, fields)])[0]

    def emit_many(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append ``(event, fields)`` entries as whole lines in one write and one fsync (a
        burst of drops announced together: an fsync per line would cost more than the
        rest of their intake)."""
        records = [{"event": e, "timestamp": utc_now(), **_clean(f)} for e, f in entries]
        if not self.enabled or not records:
            return records
        lines = "".join(
            json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n" for record in records
        )
        try:
            self._append(lines.encode())
        except OSError as exc:
            what = f"the {entries[0][0]} event" if len(entries) == 1 else f"{len(entries)} events"
            full = as_disk_full(exc, path=self.path.parent, what=what)
            if full is not None:
                raise full from exc
            raise
        return records

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A crash tore the last line; end it, or this event would be glued onto it
                # and lost to every reader.
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                # A short append on a filesystem that just ran out of room: cut it back, so
                # no reader ever sees half a line.
                os.ftruncate(fd, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)

    def last(self, event: str, *, max_bytes: int = 8 * 2**20) -> dict[str, Any] | None:
        """The newest record of one kind, reading backwards from the end of the log."""
        return next(self.read_backwards(event=event, max_bytes=max_bytes), None)

    def read_backwards(self, *, event: str | None = None, max_bytes: int = 8 * 2**20):
        """Yield records newest first (only whole, parseable lines), up to ``max_bytes`` read."""
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            fh.seek(0, os.SEEK_END)
            pos = fh.tell()
            carry = b""
            read = 0
            while pos > 0 and read < max_bytes:
                size = min(65536, pos)
                pos -= size
                fh.seek(pos)
                chunk = fh.read(size) + carry
                read += size
                lines = chunk.split(b"\n")
                carry = lines.pop(0)
                for raw in reversed(lines):
                    record = _parse(raw)
                    if record and (event is None or record.get("event") == event):
                        yield record
            if pos == 0:
                record = _parse(carry)
                if record and (event is None or record.get("event") == event):
                    yield record


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        return parse_record(raw)
    except ValueError:
        log.warning("skipping an unreadable line in the event log")
        return None


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """One line of the log as its record; None for a blank line or a JSON value that is
    not an object. ValueError: the line is not UTF-8 JSON (torn, or edited by hand).
    Readers skip both kinds; the line keeps its number."""
    raw = raw.strip()
    if not raw:
        return None
    record = json.loads(raw)  # UnicodeDecodeError is a ValueError too
    return record if isinstance(record, dict) else None


class EventTail:
    """Follows the log like ``tail -f``, by byte offset, never rescanning: each
    :meth:`read` returns the complete lines appended since the previous one.

    A last line without its newline (a writer mid-``write``, or a crash) is held back until
    it is complete. When the path names a new file (the first one, or the log was replaced
    or truncated in place), ``on_new_file(file, previous)`` says at which byte offset (a
    line start) to read it from; by default its start.
    """

    def __init__(
        self, path: Path, *, on_new_file: Callable[[FileKey, FileKey | None], int] | None = None
    ) -> None:
        self.path = Path(path)
        self.file: FileKey | None = None
        """The file being followed, or None before the first read that found one."""
        self.offset = 0
        """Where the next read starts: always a line start."""
        self._on_new_file = on_new_file or (lambda file, previous: 0)

    def read(self, *, max_bytes: int = READ_BYTES) -> tuple[bytes, bool]:
        """The complete lines appended since the last call (``b""`` if none, or no file
        yet), and whether the read stopped at ``max_bytes`` (read again without waiting)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return b"", False
        file = (stat.st_dev, stat.st_ino)
        if file != self.file or stat.st_size < self.offset:
            previous, self.file = self.file, file
            self.offset = self._on_new_file(file, previous)
        if stat.st_size <= self.offset:
            return b"", False
        with self.path.open("rb") as stream:
            opened = os.fstat(stream.fileno())
            if (opened.st_dev, opened.st_ino) != file:
                # Replaced between stat and open: the next read starts on the new file.
                return b"", True
            stream.seek(self.offset)
            data = stream.read(max_bytes)
            end = data.rfind(b"\n")
            while end < 0:
                # One line longer than max_bytes, or a torn last line: read on to its end.
                rest = stream.read(max_bytes)
                if not rest:
                    return b"", False  # torn: wait until it is completed
                found = rest.rfind(b"\n")
                if found >= 0:
                    end = len(data) + found
                data += rest
        complete = data[: end + 1]
        self.offset += len(complete)
        return complete, len(data) >= max_bytes

    def forget(self) -> None:
        """Start over: the next read treats whatever file is there as new."""
        self.file, self.offset = None, 0


FORGETTING = "forgetting"
"""An ``eval`` event's forgetting report (``trainer.forgetting``): ``{drops, worst, measured,
drops_total, threshold}``, present when at least one finished drop was scored."""
EVAL_SET_PREFIX = "eval_"
"""An ``eval`` event carries each named set's loss as ``eval_<name>``."""
_NOT_A_SET = frozenset({"eval_duration_s"})


def eval_set_losses(record: dict[str, Any]) -> dict[str, Any]:
    """Each named set's loss in an ``eval`` event, by set name (as written, unchecked)."""
    return {
        key.removeprefix(EVAL_SET_PREFIX): value
        for key, value in record.items()
        if key.startswith(EVAL_SET_PREFIX) and key not in _NOT_A_SET
    }


def round_loss(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), LOSS_DIGITS)


def loss_pair(new: float, old: float | None) -> tuple[str, str]:
    """``new`` and ``old`` written with as few decimals (at least 4, at most
    ``LOSS_DIGITS``) as tell them apart: never "2.3409 (was 2.3409)" for a real change."""
    if old is None:
        return f"{new:.4f}", "none"
    for digits in range(4, LOSS_DIGITS + 1):
        a, b = f"{new:.{digits}f}", f"{old:.{digits}f}"
        if a != b:
            return a, b
    return a, b
