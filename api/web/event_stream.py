"""``GET /v1/events``: the event log as Server-Sent Events, resumable and followed live.

The log (``<paths.state>/events.jsonl``) is append-only, one JSON object per line, so a
line's number is a stable id: each event goes out as::

    id: <line number, 1-based>
    event: <the record's "event">
    data: <the JSON line>

A client that reconnects with ``Last-Event-ID: N`` (or asks ``?after=N``) gets every line
after N exactly once. The stream follows the file like ``tail -f``: it remembers the byte
offset it has read to and polls for growth, waits for a missing file to appear, and holds
back a last line without its newline (a writer mid-``write`` or a crash) until it is
complete. A comment ``: keep-alive`` goes out when nothing else has for ``keepalive_s``,
so proxies and clients can tell a quiet stream from a dead one.

The log is followed and its lines parsed by ``trainer.records.events`` (next to its writer);
this module makes them Server-Sent Events.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse

from api.web.deps import READ
from api.web.schemas import errors
from trainer.records.events import READ_BYTES, EventTail, FileKey, parse_record

log = logging.getLogger(__name__)

INDEX_EVERY_BYTES = 8 << 20
"""Spacing of the remembered (line, offset) marks that let a resuming client skip ahead."""

KEEPALIVE = b": keep-alive\n\n"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told not to: events would arrive in bursts.
    "X-Accel-Buffering": "no",
}

DESCRIPTION = """\
Server-Sent Events (`text/event-stream`) from the event log `events.jsonl`, followed live.

Each event is sent as `id: <line number, 1-based>`, `event: <the record's "event">`,
`data: <the JSON line>`. Reconnect with the `Last-Event-ID` header (browsers' `EventSource`
does this by itself), or ask `?after=N`, to get every event after line N exactly once; the
header wins when both are given. Lines that are not JSON objects are skipped but keep their
number. A comment `: keep-alive` is sent after {keepalive_s:g} s without events. The stream
never ends on its own: it stops when the client disconnects or the server shuts down.
"""


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """What one read of the log produced."""

    body: bytes
    """Formatted SSE events (empty if no new complete line)."""
    more: bool
    """The read stopped at its size limit: read again without waiting."""


class LineIndex:
    """Known (lines before, byte offset) pairs in one log file, shared by a router's streams.

    A client resuming at line N deep in a large log starts from the nearest mark instead of
    counting lines from the start of the file. Marks are only ever appended in order, as
    streams read forward past the last one.
    """

    def __init__(self, *, every_bytes: int = INDEX_EVERY_BYTES) -> None:
        self._every = every_bytes
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None
        self._marks: list[tuple[int, int]] = [(0, 0)]

    def nearest(self, file: tuple[int, int], *, line: int) -> tuple[int, int]:
        """The furthest mark at or before ``line`` lines in ``file`` (device, inode)."""
        with self._lock:
            if file != self._file:
                return 0, 0
            at = bisect.bisect_right(self._marks, (line, float("inf"))) - 1
            return self._marks[at]

    def note(self, file: tuple[int, int], *, lines: int, offset: int) -> None:
        """Remember that ``lines`` lines end at ``offset`` (kept if far enough from the last)."""
        with self._lock:
            if file != self._file:
                self._file, self._marks = file, [(0, 0)]
            last_lines, last_offset = self._marks[-1]
            if lines > last_lines and offset - last_offset >= self._every:
                self._marks.append((lines, offset))

    def forget(self) -> None:
        """Drop every mark (the file was truncated in place)."""
        with self._lock:
            self._file, self._marks = None, [(0, 0)]


class LogTail:
    """Follows one JSONL log from after a given line, as SSE events (never rescanning)."""

    def __init__(self, path: Path, *, after: int, index: LineIndex) -> None:
        self.path = Path(path)
        self.after = after
        self._index = index
        self._tail = EventTail(self.path, on_new_file=self._reopen)
        self._lines = 0
        """Lines before where the tail reads next."""

    def read(self, *, max_bytes: int = READ_BYTES) -> Chunk:
        """The SSE events of the complete lines appended since the last call; ``more``: the
        read stopped at ``max_bytes`` (more follow at once, without waiting a poll interval)."""
        complete, more = self._tail.read(max_bytes=max_bytes)
        if not complete:
            return Chunk(body=b"", more=more)
        body = self._format(complete)
        if self._tail.file is not None:  # always, after a read that found lines
            self._index.note(self._tail.file, lines=self._lines, offset=self._tail.offset)
        return Chunk(body=body, more=more)

    def _reopen(self, file: FileKey, previous: FileKey | None) -> int:
        if previous is not None:
            # The log is append-only: this only happens when someone rotated or emptied it.
            # Ids restart with the new file's line numbers.
            truncated = file == previous
            log.warning(
                "event log %s was %s; streaming the new file from its start",
                self.path,
                "truncated" if truncated else "replaced",
            )
            self.after = 0
            if truncated:
                self._index.forget()
        self._lines, offset = self._index.nearest(file, line=self.after)
        return offset

    def _format(self, complete: bytes) -> bytes:
        """Count the lines of ``complete`` (whole lines) and format those after ``after``."""
        count = complete.count(b"\n")
        if self._lines + count <= self.after:
            # Still before the resume point: count, don't parse.
            self._lines += count
            return b""
        parts: list[bytes] = []
        for raw in complete.split(b"\n")[:-1]:
            self._lines += 1
            if self._lines > self.after:
                event = format_event(raw, number=self._lines)
                if event is not None:
                    parts.append(event)
        return b"".join(parts)


def format_event(raw: bytes, *, number: int) -> bytes | None:
    """One log line as an SSE event with id ``number``; None for a blank or unreadable line."""
    text = raw.strip()
    if not text:
        return None
    try:
        record = parse_record(text)
    except ValueError:
        log.warning("event log line %d is not UTF-8 JSON; skipped", number)
        return None
    if record is None:
        log.warning("event log line %d is not a JSON object; skipped", number)
        return None
    data = text.decode("utf-8")
    if "\r" in data:
        # JSON allows a bare CR as whitespace; SSE would read it as a line break.
        data = json.dumps(record, separators=(",", ":"))
    name = record.get("event")
    lines = [f"id: {number}"]
    if isinstance(name, str) and name and not any(c in name for c in "\r\n"):
        lines.append(f"event: {name}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


def close_event_streams(app: FastAPI) -> None:
    """End every open event stream of ``app`` within a poll interval.

    Call it when the server starts shutting down: uvicorn waits for open responses to end
    before it runs the app's shutdown, and an event stream otherwise never ends.
    """
    app.state.event_streams_closing = True


def events_router(
    *, events_path: Path, keepalive_s: float = 15.0, poll_s: float = 0.2
) -> APIRouter:
    """The router of ``GET /v1/events`` on the log at ``events_path``."""
    router = APIRouter(tags=["events"], dependencies=READ)
    index = LineIndex()

    @router.get(
        "/v1/events",
        summary="Server-Sent Events from the event log, resumable with Last-Event-ID",
        description=DESCRIPTION.format(keepalive_s=keepalive_s),
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "An endless `text/event-stream`.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(401, 422),
        },
    )
    async def events(
        request: Request,
        after: Annotated[
            int | None, Query(ge=0, description="Start after this line number (default 0).")
        ] = None,
        last_event_id: Annotated[
            int | None,
            Header(ge=0, description="The id of the last event received; wins over `after`."),
        ] = None,
    ) -> StreamingResponse:
        start = last_event_id if last_event_id is not None else (after or 0)
        tail = LogTail(events_path, after=start, index=index)
        stream = follow(request, tail=tail, keepalive_s=keepalive_s, poll_s=poll_s)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    return router


async def follow(
    request: Request, *, tail: LogTail, keepalive_s: float, poll_s: float
) -> AsyncIterator[bytes]:
    """Yield the log's events as they are appended, and keep-alives in quiet times."""
    quiet_since = time.monotonic()
    while not await stopping(request):
        try:
            # File reads and JSON parsing off the event loop: a resume deep in a large log
            # reads megabytes.
            chunk = await anyio.to_thread.run_sync(tail.read)
        except OSError as exc:
            log.error("cannot read the event log %s: %s; closing the stream", tail.path, exc)
            return
        now = time.monotonic()
        if chunk.body:
            yield chunk.body
            quiet_since = now
        elif now - quiet_since >= keepalive_s:
            yield KEEPALIVE
            quiet_since = now
        if not chunk.more:
            await anyio.sleep(poll_s)


async def stopping(request: Request) -> bool:
    """The client went away, or the server is shutting down."""
    state = request.app.state
    if getattr(state, "event_streams_closing", False):
        return True
    daemon = getattr(state, "daemon", None)
    if daemon is not None and daemon.stopping.is_set():
        return True
    return await request.is_disconnected()
