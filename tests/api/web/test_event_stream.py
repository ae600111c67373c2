"""GET /v1/events: Server-Sent Events from events.jsonl, against a real uvicorn server.

The log is written behind the server's back the way the trainer writes it (one
``O_APPEND`` write per line), including a line torn in two writes, while clients stream,
disconnect and reconnect with ``Last-Event-ID``: together they must see every event once,
in order. The tail reader is also tested on its own with generated logs and reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.web.event_stream import LineIndex, LogTail, close_event_streams, events_router
from tests.api.live_server import Live, live_app, live_traind

pytestmark = pytest.mark.usefixtures("clean_env")

TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class Sse:
    id: int | None
    event: str | None
    data: str


@dataclass(frozen=True)
class Comment:
    text: str


def parse_stream(lines: Iterator[str]) -> Iterator[Sse | Comment]:
    """The SSE wire format, as a browser's EventSource reads it (fields we use only)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                raw_id = fields.get("id")
                yield Sse(
                    id=int(raw_id) if raw_id is not None else None,
                    event=fields.get("event"),
                    data=fields.get("data", ""),
                )
                fields = {}
            continue
        if line.startswith(":"):
            yield Comment(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


class Stream:
    """One client connection to /v1/events, read event by event."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self._client = httpx.Client(timeout=TIMEOUT)
        self._context = self._client.stream("GET", f"{url}/v1/events", headers=headers)
        self.response = self._context.__enter__()
        self._items = parse_stream(self.response.iter_lines())

    def events(self, count: int) -> list[Sse]:
        got: list[Sse] = []
        while len(got) < count:
            item = next(self._items)
            if isinstance(item, Sse):
                got.append(item)
        return got

    def next_item(self) -> Sse | Comment:
        return next(self._items)

    def close(self) -> None:
        if self._client.is_closed:
            return
        self._context.__exit__(None, None, None)
        self._client.close()


@pytest.fixture
def open_stream() -> Iterator[Callable[..., Stream]]:
    """Opens streams, and closes whichever a failing test left open."""
    opened: list[Stream] = []

    def open_(url: str, **kwargs: Any) -> Stream:
        stream = Stream(url, **kwargs)
        opened.append(stream)
        return stream

    yield open_
    for stream in opened:
        stream.close()


def line_of(number: int, event: str = "eval") -> bytes:
    record = {"event": event, "timestamp": "2026-01-01T00:00:00.000Z", "n": number}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def append(path: Path, data: bytes) -> None:
    """One write on an O_APPEND descriptor, as trainer.events.EventLog does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def events_path(live: Live) -> Path:
    return live.settings.run_paths().events


def assert_exactly_once(received: list[Sse], *, total: int) -> None:
    assert [e.id for e in received] == list(range(1, total + 1))
    for event in received:
        assert event.data.encode() + b"\n" == line_of(event.id, event.event or "")
        assert json.loads(event.data)["n"] == event.id


def test_reconnecting_clients_get_every_event_once(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    with live_traind(tmp_path) as live:
        path = events_path(live)
        for n in range(1, 11):
            append(path, line_of(n))
        first = open_stream(live.url)
        assert first.response.headers["content-type"].startswith("text/event-stream")
        assert first.response.headers["cache-control"] == "no-cache"
        assert first.response.headers["x-accel-buffering"] == "no"
        received = first.events(10)
        for n in range(11, 16):  # appended while the client streams
            append(path, line_of(n))
        received += first.events(5)
        # Line 16 torn in two writes; the client leaves before it is completed.
        torn = line_of(16, "checkpoint_saved")
        append(path, torn[:20])
        time.sleep(0.6)  # several polls see the torn line
        first.close()
        append(path, torn[20:])
        for n in range(17, 21):
            append(path, line_of(n))

        second = open_stream(live.url, headers={"Last-Event-ID": str(received[-1].id)})
        received += second.events(3)  # 16..18, then it disconnects mid-way
        second.close()

        def write_more() -> None:
            for n in range(21, 41):
                append(path, line_of(n))
                time.sleep(0.01)

        writer = threading.Thread(target=write_more)
        third = open_stream(live.url, headers={"Last-Event-ID": str(received[-1].id)})
        writer.start()
        received += third.events(22)  # 19..40
        writer.join()
        third.close()
    assert_exactly_once(received, total=40)
    assert received[15].event == "checkpoint_saved"


def test_after_query_and_header_precedence(tmp_path: Path) -> None:
    with live_traind(tmp_path) as live:
        path = events_path(live)
        for n in range(1, 8):
            append(path, line_of(n))
        with httpx.Client(timeout=TIMEOUT) as client:
            for url, headers, first_id in (
                (f"{live.url}/v1/events?after=4", None, 5),
                (f"{live.url}/v1/events?after=4", {"Last-Event-ID": "6"}, 7),
                (f"{live.url}/v1/events?after=0", None, 1),
            ):
                with client.stream("GET", url, headers=headers) as response:
                    first = next(
                        e for e in parse_stream(response.iter_lines()) if isinstance(e, Sse)
                    )
                assert first.id == first_id
            bad = client.get(f"{live.url}/v1/events", headers={"Last-Event-ID": "abc"})
            assert bad.status_code == 422
            assert client.get(f"{live.url}/v1/events?after=-1").status_code == 422


def test_stream_waits_for_the_log_to_appear(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    app = FastAPI()
    path = tmp_path / "state" / "events.jsonl"
    app.include_router(events_router(events_path=path, keepalive_s=30, poll_s=0.05))
    with live_app(app) as live:
        stream = open_stream(live.url)
        time.sleep(0.3)  # polls a missing file
        append(path, line_of(1) + line_of(2))
        received = stream.events(2)
        stream.close()
    assert_exactly_once(received, total=2)


def test_bad_lines_are_skipped_but_keep_their_numbers(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    app = FastAPI()
    path = tmp_path / "events.jsonl"
    append(path, line_of(1) + b"not json\n" + b"\n" + b"[1, 2]\n" + b'{"no_event": true}\n')
    append(path, b'{"event":"bad\\nname","x":1}\n' + line_of(7) + b"\xff\xfe\n" + line_of(9))
    app.include_router(events_router(events_path=path, keepalive_s=30, poll_s=0.05))
    with live_app(app) as live:
        stream = open_stream(live.url)
        received = stream.events(5)
        stream.close()
    assert [e.id for e in received] == [1, 5, 6, 7, 9]
    assert received[1].event is None  # no "event" key: a plain "message" for EventSource
    assert json.loads(received[1].data) == {"no_event": True}
    assert received[2].event is None  # a name with a line break cannot be a field
    assert received[3].event == "eval"


def test_keepalive_comments_arrive_in_quiet_times(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    app = FastAPI()
    path = tmp_path / "events.jsonl"
    append(path, line_of(1))
    app.include_router(events_router(events_path=path, keepalive_s=0.2, poll_s=0.05))
    with live_app(app) as live:
        stream = open_stream(live.url)
        started = time.monotonic()
        items = [stream.next_item() for _ in range(4)]
        elapsed = time.monotonic() - started
        stream.close()
    assert items[0] == Sse(id=1, event="eval", data=line_of(1).decode().strip())
    assert items[1:] == [Comment("keep-alive")] * 3
    assert 0.4 <= elapsed < 3


def test_disconnect_ends_the_stream_task(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    app = FastAPI()
    path = tmp_path / "events.jsonl"
    append(path, line_of(1))
    app.include_router(events_router(events_path=path, keepalive_s=30, poll_s=0.05))
    with live_app(app) as live:
        stream = open_stream(live.url)
        stream.events(1)
        assert live.server.server_state.tasks  # the streaming request
        stream.close()
        deadline = time.monotonic() + 3
        while live.server.server_state.tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not live.server.server_state.tasks, "the stream kept running after disconnect"


def test_server_shutdown_ends_open_streams(
    tmp_path: Path, open_stream: Callable[..., Stream]
) -> None:
    with live_traind(tmp_path) as live:
        append(events_path(live), line_of(1))
        stream = open_stream(live.url)
        stream.events(1)
        started = time.monotonic()
        close_event_streams(live.app)
        with pytest.raises(StopIteration):
            stream.next_item()  # the server ends the response
        assert time.monotonic() - started < 2
        stream.close()


# -- the tail reader on its own --------------------------------------------------------


def drain(tail: LogTail, *, max_bytes: int) -> bytes:
    body = b""
    while True:
        chunk = tail.read(max_bytes=max_bytes)
        body += chunk.body
        if not chunk.more:
            return body


def sse_of(body: bytes) -> list[Sse]:
    return [item for item in parse_stream(iter(body.decode().split("\n"))) if isinstance(item, Sse)]


lines_strategy = st.lists(
    st.one_of(
        st.builds(line_of, st.integers(0, 10**6), st.sampled_from(["eval", "file_start"])),
        st.sampled_from([b"\n", b"garbage\n", b"[]\n"]),
        st.text(max_size=300).map(lambda s: (json.dumps({"event": "x", "s": s}) + "\n").encode()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines_strategy,
    cuts=st.lists(st.integers(0, 20_000), max_size=12),
    after=st.integers(0, 45),
    max_bytes=st.integers(1, 200),
)
def test_tail_reads_every_complete_line_once(
    lines: list[bytes], cuts: list[int], after: int, max_bytes: int
) -> None:
    content = b"".join(lines)
    points = sorted({min(c, len(content)) for c in cuts} | {len(content)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        tail = LogTail(path, after=after, index=LineIndex(every_bytes=64))
        body = drain(tail, max_bytes=max_bytes)  # no file yet
        start = 0
        for point in points:  # appends that may end inside a line (torn)
            append(path, content[start:point])
            start = point
            body += drain(tail, max_bytes=max_bytes)
    expected = [
        (number, raw.rstrip(b"\n").decode())
        for number, raw in enumerate(lines, start=1)
        if number > after and is_event(raw)
    ]
    assert [(e.id, e.data) for e in sse_of(body)] == expected


def is_event(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def test_resume_starts_from_the_nearest_index_mark(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    content = b"".join(line_of(n) for n in range(1, 2001))
    append(path, content)
    index = LineIndex(every_bytes=4096)
    drain(LogTail(path, after=0, index=index), max_bytes=1000)
    file = (path.stat().st_dev, path.stat().st_ino)
    lines, offset = index.nearest(file, line=1500)
    assert 1500 - lines < 200  # a mark every ~4 KiB of ~60-byte lines
    assert content[:offset].count(b"\n") == lines  # a true line start
    assert offset == 0 or content[offset - 1 : offset] == b"\n"
    resumed = sse_of(drain(LogTail(path, after=1500, index=index), max_bytes=1000))
    assert [e.id for e in resumed] == list(range(1501, 2001))


def test_polls_without_growth_do_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    append(path, line_of(1) + line_of(2))
    tail = LogTail(path, after=0, index=LineIndex())
    assert [e.id for e in sse_of(drain(tail, max_bytes=1 << 20))] == [1, 2]
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    for _ in range(5):
        assert tail.read().body == b""
    assert opened == []
    append(path, line_of(3))
    assert [e.id for e in sse_of(tail.read().body)] == [3]
    assert len(opened) == 1


def test_replaced_or_truncated_log_is_followed_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, line_of(1) + line_of(2) + line_of(3))
    tail = LogTail(path, after=1, index=LineIndex())
    assert [e.id for e in sse_of(drain(tail, max_bytes=64))] == [2, 3]
    fresh = tmp_path / "fresh.jsonl"
    append(fresh, line_of(1))
    fresh.replace(path)
    assert [e.id for e in sse_of(drain(tail, max_bytes=64))] == [1]
    path.write_bytes(b"")  # truncated in place
    assert drain(tail, max_bytes=64) == b""
    append(path, line_of(1) + line_of(2))
    assert [e.id for e in sse_of(drain(tail, max_bytes=64))] == [1, 2]
