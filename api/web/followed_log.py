"""What the API keeps current from the event log (``<paths.state>/events.jsonl``): the
base of the readers that follow it from its start, one whole line at a time
(:class:`api.web.history.EventDigest`, :class:`api.web.series.SeriesStore`).

The log only grows, and may grow large over months of training, so each refresh reads
only the lines appended since the previous one (``trainer.records.events.EventTail``),
and starts over when the file was replaced or truncated.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from trainer.records.events import READ_BYTES, EventTail, FileKey, parse_record

log = logging.getLogger(__name__)


class FollowedLog:
    """Follows the log at ``path``. A subclass says what it keeps (``_clear`` empties it)
    and what one line does to it (``_take_line``), and reads under ``self._lock`` after
    ``self._refresh()``. ``self._line`` counts the lines read, those that are not JSON
    too: the numbering of ``GET /v1/events``'s ids."""

    def __init__(self, path: Path, *, read_bytes: int = READ_BYTES) -> None:
        self.path = path
        self._read_bytes = read_bytes
        self._lock = threading.Lock()
        self._tail = EventTail(path, on_new_file=self._new_file)
        self._line = 0
        self._clear()

    def _clear(self) -> None:
        raise NotImplementedError

    def _take_line(self, raw: bytes, *, line: int) -> None:
        raise NotImplementedError

    def _new_file(self, file: FileKey, previous: FileKey | None) -> int:
        # Replaced or truncated: what was read of the old file no longer holds.
        self._line = 0
        self._clear()
        return 0

    def _refresh(self) -> None:
        if not self.path.exists():
            self._tail.forget()
            self._line = 0
            self._clear()
            return
        more = True
        while more:
            data, more = self._tail.read(max_bytes=self._read_bytes)
            lines = data.split(b"\n")
            lines.pop()  # data is whole lines: after the last newline, nothing
            first = self._line
            self._line += len(lines)
            for number, raw in enumerate(lines, start=first + 1):
                self._take_line(raw, line=number)


def parse_line(raw: bytes, *, line: int) -> dict[str, Any] | None:
    """The line's record, or None (not JSON: skipped, its number kept)."""
    try:
        return parse_record(raw)
    except ValueError:
        log.debug("events.jsonl line %d is not JSON; skipped", line)
        return None
