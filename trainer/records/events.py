"""The append-only event log ``state/events.jsonl`` (design section 4).

One JSON object per line, each with ``event`` and an ISO-8601 ``timestamp``. Lines are
written with a single ``write`` on an ``O_APPEND`` descriptor and fsynced, so readers
(the API's SSE stream, ``tail -f``) never see half a line from a live writer and a
crash loses at most the line being written.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.records.space import as_disk_full

log = logging.getLogger(__name__)

LOSS_DIGITS = 6


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
        record = {"event": event, "timestamp": utc_now(), **_clean(fields)}
        if not self.enabled:
            return record
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        try:
            self._append(line)
        except OSError as exc:
            full = as_disk_full(exc, path=self.path.parent, what=f"the {event} event")
            if full is not None:
                raise full from exc
            raise
        return record

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
    raw = raw.strip()
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        log.warning("skipping an unreadable line in the event log")
        return None
    return record if isinstance(record, dict) else None


def round_loss(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), LOSS_DIGITS)
