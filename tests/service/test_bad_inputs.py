"""Bad input is a test corpus: every kind of bad drop, in one real watched inbox.

All the drops below (bad and good) go into one inbox watched by a real watchdog observer
with a real SQLite ledger, in one run. Each bad one must end ``rejected`` with a reason
naming what is wrong (and the line, where there is one), be kept under ``rejected/``
with its ``.reason.txt``, and be announced in the event log; the good ones dropped
alongside must still be queued.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.ledger import FileState, Ledger
from service.ledger.records import FileRecord
from service.sections import WatcherSection
from service.watcher import InboxWatcher
from trainer.events import EventLog

MAX_LINE_BYTES = 4096
MAX_FILE_BYTES = 64 * 1024
SETTLE_S = 0.2
LINUX = Path("/proc/self/fdinfo").is_dir()


def jl(*rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


TEXT = {"text": "If X=2 and Y=3, X+Y = 5."}
QA = {"prompt": "2+2=", "completion": " 4"}
CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _flipped_gzip() -> bytes:
    data = bytearray(gz(jl(*({"text": f"line {i} " * 20} for i in range(200)))))
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    return bytes(data)


@dataclass(frozen=True)
class Bad:
    """One kind of bad drop and what its rejection must say."""

    kind: str
    name: str
    reason: str
    line: int | None = None
    data: bytes | None = None
    make: Callable[[Path], None] | None = None
    in_place: bool = False


def _symlink(path: Path) -> None:
    outside = path.parent / "outside-target.jsonl"
    outside.write_bytes(jl(TEXT))
    path.symlink_to(outside)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


BAD = [
    Bad("invalid UTF-8", "latin1.jsonl", "is not valid UTF-8 (byte 0xe9", 2,
        jl(TEXT) + b'{"text": "caf\xe9"}\n'),
    Bad("UTF-16 file", "utf16.jsonl", "is not valid UTF-8", 1,
        '{"text": "hi"}\n'.encode("utf-16")),
    Bad("binary garbage", "garbage.jsonl", "has no valid example", 1,
        random.Random(7).randbytes(3000)),
    Bad("NUL bytes", "nul.jsonl", "is not valid JSON", 1, b"\x00" * 64 + b"\n"),
    Bad("NUL inside a string", "nul-in-string.jsonl", "is not valid JSON", 2,
        jl(TEXT) + b'{"text": "a\x00b"}\n'),
    Bad("truncated last line", "truncated.jsonl", "is truncated", 2,
        jl(TEXT) + b'{"text": "cut o'),
    Bad("not JSON", "prose.jsonl", "is not valid JSON", 1, b"Dear diary, today I trained.\n",
        in_place=True),
    Bad("JSON array line", "array.jsonl", "is a JSON list, not an object", 2,
        jl(TEXT) + b'["text", "x"]\n'),
    Bad("JSON number line", "number.jsonl", "is a JSON number, not an object", 1, b"42\n"),
    Bad("JSON string line", "string.jsonl", "is a JSON string, not an object", 1, b'"hi"\n'),
    Bad("JSON null line", "null.jsonl", "is a JSON null, not an object", 1, b"null\n"),
    Bad("unknown keys only", "schema.jsonl", 'has no "text", "prompt"/"completion" or "messages"',
        1, jl({"question": "2+2", "answer": "4"})),
    Bad("missing completion", "no-completion.jsonl", 'is missing "completion"', 2,
        jl(QA, {"prompt": "3+3="})),
    Bad("missing prompt", "no-prompt.jsonl", 'is missing "prompt"', 1,
        jl({"completion": " 6"})),
    Bad("completion not a string", "completion-number.jsonl",
        '"completion" must be a string, got number', 2, jl(QA, {"prompt": "1+1=", "completion": 2})),
    Bad("empty completion", "completion-empty.jsonl", '"completion" is empty', 1,
        jl({"prompt": "1+1=", "completion": ""})),
    Bad("text not a string", "text-list.jsonl", '"text" must be a string, got list', 1,
        jl({"text": ["a", "b"]})),
    Bad("text NaN", "text-nan.jsonl", '"text" must be a string, got number', 1,
        b'{"text": NaN}\n'),
    Bad("empty text", "text-empty.jsonl", '"text" is empty', 3, jl(TEXT, TEXT, {"text": "   "})),
    Bad("lone surrogate", "surrogate.jsonl", "lone surrogate", 1, b'{"text": "\\ud800"}\n'),
    Bad("messages empty list", "messages-empty.jsonl",
        '"messages" must be a non-empty list, got empty list', 1, jl({"messages": []})),
    Bad("messages not a list", "messages-string.jsonl",
        '"messages" must be a non-empty list, got string', 1, jl({"messages": "hi"})),
    Bad("message bad role", "role.jsonl", 'message 2 has unknown role "robot"', 2,
        jl(CHAT, {"messages": [{"role": "user", "content": "x"},
                               {"role": "robot", "content": "y"}]})),
    Bad("message content not a string", "content.jsonl",
        'message 1 "content" must be a string, got number', 1,
        jl({"messages": [{"role": "user", "content": 3}]})),
    Bad("message missing content", "no-content.jsonl", 'message 1 needs "role" and "content"', 1,
        jl({"messages": [{"role": "user"}]})),
    Bad("mixed formats", "mixed.jsonl",
        "this file is in text format (from line 1); line 3 is prompt_completion format", 3,
        jl(TEXT, TEXT, QA, CHAT)),
    Bad("keys of two formats on one line", "two-formats.jsonl",
        "mixes the keys of several formats", 1, jl({"text": "a", "prompt": "b", "completion": "c"})),
    Bad("deeply nested JSON", "nested.jsonl", "nested too deeply", 1, b"[" * 4_000 + b"\n"),
    Bad("empty file", "empty.jsonl", "the file is empty", None, b"", in_place=True),
    Bad("whitespace-only file", "blank.jsonl", "the file is empty", None, b"\n  \n\t\n\r\n"),
    Bad("line over max_line_bytes", "long-line.jsonl",
        f"is longer than the limit of {MAX_LINE_BYTES} bytes", 2,
        jl(TEXT, {"text": "x" * (MAX_LINE_BYTES + 10)}, TEXT)),
    Bad("file over max_file_bytes", "huge.jsonl",
        f"over the limit of {MAX_FILE_BYTES} bytes (watcher.max_file_bytes)", None,
        jl(*[TEXT] * (MAX_FILE_BYTES // len(jl(TEXT)) + 5))),
    Bad(".jsonl.gz that is not gzip", "plain.jsonl.gz", "is not gzip-compressed", None, jl(TEXT)),
    Bad("truncated gzip", "cut.jsonl.gz", "the gzip data ends abruptly", None,
        gz(jl(*[TEXT] * 500))[:-40]),
    Bad("corrupt gzip", "flipped.jsonl.gz", "corrupt", None, _flipped_gzip()),
    Bad("gzip with a bad line", "bad-line.jsonl.gz", "is not valid JSON", 2,
        gz(jl(TEXT) + b"{oops}\n")),
    Bad("some good, some bad lines", "partly.jsonl", "has 2 invalid lines of 5 (lines 2, 4)", 2,
        jl(TEXT) + b"{bad\n" + jl(TEXT) + b"[]\n" + jl(TEXT)),
    Bad("symlink out of the inbox", "link.jsonl", "is a symbolic link", None, make=_symlink),
    Bad("FIFO named .jsonl", "pipe.jsonl", "is a FIFO (named pipe), not a regular file", None,
        make=_fifo),
    Bad("wrong extension .txt", "notes.txt", "only *.jsonl and *.jsonl.gz files are taken", None,
        b"some notes\n"),
    Bad("wrong extension .json", "data.json", "only *.jsonl and *.jsonl.gz files are taken", None,
        json.dumps([TEXT]).encode()),
    Bad("no extension", "README", "only *.jsonl and *.jsonl.gz files are taken", None, b"hi\n",
        in_place=True),
]  # fmt: skip

GOOD = {
    "utf8-bom.jsonl": b"\xef\xbb\xbf" + jl(TEXT, TEXT),
    "crlf.jsonl": jl(QA, QA).replace(b"\n", b"\r\n"),
    "blank-lines.jsonl": b"\n" + jl(TEXT) + b"\n\n  \n" + jl({"text": "another"}) + b"\n",
    "extra-keys.jsonl": jl({**QA, "id": 7, "source": "web"}, {**QA, "meta": {"a": 1}}),
    "extra-keys-chat.jsonl": jl(
        {"messages": [{"role": "user", "content": "hi", "name": "bob"}], "id": "x1"}
    ),
    "données d'été 2024 (v2).jsonl": jl({"text": "héhé, ça marche 🎉"}),
    "compressed.jsonl.gz": gz(jl(*[CHAT] * 10)),
    "no-final-newline.jsonl": jl(TEXT) + b'{"text": "last line, complete JSON"}',
    "written-in-place.jsonl": jl({"text": "in place"}),
}
IN_PLACE_GOOD = {"written-in-place.jsonl"}


@dataclass
class Run:
    """The outcome of dropping the whole corpus into one watched inbox."""

    inbox: Path
    records: dict[str, FileRecord]
    events: list[dict]


def _drop(staging: Path, inbox: Path, name: str, *, data: bytes | None, make, in_place: bool):
    target = inbox / name
    if in_place:
        target.write_bytes(data or b"")
        return
    staged = staging / name
    if make is not None:
        make(staged)
    else:
        staged.write_bytes(data or b"")
    staged.rename(target)  # a rename moves a link or a FIFO itself, not what it points to


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("corpus")
    inbox, staging = root / "inbox", root / "staging"
    staging.mkdir()
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    settings = WatcherSection(
        settle_s=SETTLE_S,
        rescan_interval_s=1.0,
        max_file_bytes=MAX_FILE_BYTES,
        max_line_bytes=MAX_LINE_BYTES,
    )
    watcher = InboxWatcher(inbox, ledger=ledger, settings=settings, events=EventLog(root / "ev"))
    watcher.start()
    try:
        (inbox / "folder.jsonl").mkdir()  # a directory: ignored, never recorded
        (inbox / "folder.jsonl" / "inside.jsonl").write_bytes(jl(TEXT))
        for bad in BAD:
            _drop(staging, inbox, bad.name, data=bad.data, make=bad.make, in_place=bad.in_place)
        for name, data in GOOD.items():
            _drop(staging, inbox, name, data=data, make=None, in_place=name in IN_PLACE_GOOD)
        expected = len(BAD) + len(GOOD)
        deadline = time.monotonic() + 30
        while ledger.list_files(limit=1)[1] < expected:
            assert time.monotonic() < deadline, "the corpus was not all recorded in 30 s"
            time.sleep(0.05)
        time.sleep(1.2)  # one more rescan: nothing else may be recorded
        records, total = ledger.list_files(limit=1000)
        assert total == expected
        lines = (root / "ev").read_text().splitlines()
        yield Run(inbox, {r.name: r for r in records}, [json.loads(x) for x in lines])
    finally:
        watcher.stop()
        ledger.close()


def test_the_corpus_has_enough_kinds() -> None:
    assert len(BAD) >= 25
    assert len({b.name for b in BAD} | set(GOOD)) == len(BAD) + len(GOOD)


@pytest.mark.parametrize("bad", BAD, ids=[b.kind for b in BAD])
def test_bad_drop_is_rejected_with_its_reason_and_kept(run: Run, bad: Bad) -> None:
    record = run.records[bad.name]
    assert record.state is FileState.REJECTED
    assert record.error is not None
    assert bad.reason in record.error
    assert bad.name in record.error  # the reason names the file
    if bad.line is not None:
        assert f"line {bad.line}" in record.error
        assert bad.line in [p.line for p in record.invalid_lines]
    kept = run.inbox / "rejected" / f"{record.id:06d}-{bad.name}"
    assert record.path == str(kept)
    assert os.path.lexists(kept)
    assert not os.path.lexists(run.inbox / bad.name)
    if bad.data is not None:
        assert kept.read_bytes() == bad.data  # kept as dropped, byte for byte
    reason = kept.with_name(kept.name + ".reason.txt").read_text(encoding="utf-8")
    assert bad.reason in reason
    if bad.line is not None:
        assert f"line {bad.line}:" in reason
    (event,) = [e for e in run.events if e["event"] == "file_rejected" and e["file"] == bad.name]
    assert event["id"] == record.id
    assert event["reason"] == record.error
    if bad.line is not None:
        assert bad.line in event["lines"]


def test_links_and_fifos_are_moved_as_they_are(run: Run) -> None:
    link = Path(run.records["link.jsonl"].path)
    assert link.is_symlink()
    assert Path(run.records["pipe.jsonl"].path).is_fifo()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_drops_in_the_same_run_are_queued(run: Run, name: str) -> None:
    record = run.records[name]
    assert record.state is FileState.QUEUED, record.error
    assert record.path == str(run.inbox / "accepted" / f"{record.id:06d}-{name}")
    assert Path(record.path).read_bytes() == GOOD[name]
    assert record.n_invalid == 0


def test_a_directory_named_like_a_drop_is_left_alone(run: Run) -> None:
    assert "folder.jsonl" not in run.records
    assert (run.inbox / "folder.jsonl" / "inside.jsonl").read_bytes() == jl(TEXT)
    assert "inside.jsonl" not in run.records


def test_only_ignored_things_remain_at_the_top_level(run: Run) -> None:
    left = sorted(p.name for p in run.inbox.iterdir())
    assert left == ["accepted", "duplicates", "folder.jsonl", "rejected"]


@pytest.mark.skipif(not LINUX, reason="the writer check reads /proc")
def test_a_file_still_being_written_waits_and_is_not_rejected_as_truncated(
    tmp_path: Path,
) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = WatcherSection(settle_s=SETTLE_S, rescan_interval_s=0.3)
    watcher = InboxWatcher(
        tmp_path / "inbox", ledger=ledger, settings=settings, events=EventLog(tmp_path / "ev")
    )
    watcher.start()
    try:
        path = tmp_path / "inbox" / "streaming.jsonl"
        with path.open("wb") as handle:
            handle.write(jl(TEXT) + b'{"text": "half a li')  # a writer mid-line
            handle.flush()
            time.sleep(SETTLE_S + 0.3 * 3)  # settle, fallback and rescans all pass
            assert ledger.list_files()[1] == 0
            assert path.exists()
            handle.write(b'ne"}\n')
        deadline = time.monotonic() + 10
        while ledger.list_files()[1] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (record,) = ledger.list_files()[0]
        assert (record.state, record.n_examples) == (FileState.QUEUED, 2)
    finally:
        watcher.stop()
        ledger.close()
