"""A burst of drops recorded a batch at a time: one ledger transaction per batch, the
same verdicts as one by one, and nothing lost or queued twice by a crash between the
batch's writes (a real watcher, a real SQLite ledger, and a child process that kills
itself at a fault point)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from service.config.sections import WatcherSection
from service.inbox.filing import BatchLimits
from service.inbox.watcher import InboxWatcher
from service.ledger import FileRecord, FileState, Ledger
from service.ledger.engine import BEGIN_OPTION
from trainer.records.events import EventLog

REPO = Path(__file__).resolve().parents[3]


def lines(*texts: str) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


class Burst:
    """An inbox, a ledger and an event log in ``root``, and a watcher on them."""

    def __init__(self, root: Path, *, limits: BatchLimits | None = None) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        self.wakes: list[list[FileRecord]] = []
        self.watcher = InboxWatcher(
            self.inbox,
            ledger=self.ledger,
            settings=WatcherSection(settle_s=0.2, rescan_interval_s=60.0),
            events=EventLog(root / "events.jsonl"),
            on_queued=self._woken,
            batch_limits=limits or BatchLimits(max_files=256, max_wait_s=60.0),
        )
        self.watcher.layout.create()
        self.writes = 0
        event.listen(self.ledger.engine, "begin", self._began)

    def _began(self, connection: object) -> None:
        options = connection.get_execution_options()  # type: ignore[attr-defined]
        if options.get(BEGIN_OPTION, "IMMEDIATE") != "DEFERRED":
            self.writes += 1

    def _woken(self) -> None:
        # What a woken worker would see: every queued row is committed and filed away.
        self.wakes.append(self.ledger.queue_order())

    def put(self, name: str, text: str) -> Path:
        path = self.inbox / name
        path.write_text(text, encoding="utf-8")
        return path

    def take(self) -> list[FileRecord]:
        """Everything ready now, as the watcher's loop takes it."""
        self.watcher.rescan()
        return self.watcher.process_ready(1e12)

    def events(self, kind: str) -> list[dict]:
        path = self.root / "events.jsonl"
        found = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [e for e in found if e["event"] == kind]

    def close(self) -> None:
        self.watcher.stop()
        self.ledger.close()


@pytest.fixture
def burst(tmp_path: Path) -> Iterator[Burst]:
    burst = Burst(tmp_path)
    yield burst
    burst.close()


def test_a_burst_is_recorded_in_one_transaction_and_every_file_queued(burst: Burst) -> None:
    for i in range(40):
        burst.put(f"drop-{i:02d}.jsonl", lines(f"drop {i}"))
    taken = burst.take()
    assert [r.name for r in taken] == sorted(r.name for r in taken)
    assert len(taken) == 40 and {r.state for r in taken} == {FileState.QUEUED}
    # One transaction records them all, one notes where they went.
    assert burst.writes == 2
    for record in taken:
        assert Path(record.path).parent == burst.inbox / "accepted"
        stored = burst.ledger.get_file(record.id)
        assert stored is not None and (stored.path, stored.state) == (record.path, record.state)
    assert sorted(p.name for p in burst.inbox.iterdir()) == ["accepted", "duplicates", "rejected"]
    assert [e["id"] for e in burst.events("file_queued")] == [r.id for r in taken]
    # The worker is woken once, after the batch committed and was filed away.
    (seen,) = burst.wakes
    assert [r.id for r in seen] == [r.id for r in taken]
    assert all(Path(r.path).parent == burst.inbox / "accepted" for r in seen)


def test_a_batch_holds_at_most_max_files(tmp_path: Path) -> None:
    burst = Burst(tmp_path, limits=BatchLimits(max_files=8, max_wait_s=60.0))
    try:
        for i in range(20):
            burst.put(f"drop-{i:02d}.jsonl", lines(f"drop {i}"))
        taken = burst.take()
        assert len(taken) == 20
        assert burst.writes == 2 * 3  # batches of 8, 8 and 4
        assert len(burst.wakes) == 3
    finally:
        burst.close()


def test_duplicates_inside_one_batch_and_against_the_ledger_are_found_as_one_by_one(
    burst: Burst,
) -> None:
    burst.put("old.jsonl", lines("seen before"))
    (old,) = burst.take()
    burst.put("a.jsonl", lines("twice in the batch"))
    burst.put("b.jsonl", lines("twice in the batch"))
    burst.put("c.jsonl", lines("seen before"))
    burst.put("d.jsonl", lines("twice in the batch"))
    burst.writes = 0
    a, b, c, d = burst.take()
    assert burst.writes == 2
    assert a.state is FileState.QUEUED
    assert (b.state, b.duplicate_of) == (FileState.DUPLICATE, a.id)
    assert b.error == f"same content as file #{a.id} (a.jsonl), still queued"
    assert d.duplicate_of == a.id
    assert (c.state, c.duplicate_of) == (FileState.DUPLICATE, old.id)
    assert c.error == f"same content as file #{old.id} (old.jsonl), still queued"
    for record in (b, c, d):
        assert Path(record.path).parent == burst.inbox / "duplicates"
    assert [e["id"] for e in burst.events("file_duplicate")] == [b.id, c.id, d.id]


def test_one_bad_file_does_not_fail_the_good_ones_of_its_batch(burst: Burst) -> None:
    burst.put("good1.jsonl", lines("fine"))
    burst.put("half.jsonl", lines("fine too") + "not json\n")
    burst.put("notes.txt", "a note\n")
    burst.put("good2.jsonl", lines("also fine"))
    records = {r.name: r for r in burst.take()}
    assert burst.writes == 2
    assert records["good1.jsonl"].state is FileState.QUEUED
    assert records["good2.jsonl"].state is FileState.QUEUED
    half, notes = records["half.jsonl"], records["notes.txt"]
    assert half.state is FileState.REJECTED and "line 2" in (half.error or "")
    assert [p.line for p in half.invalid_lines] == [2]
    assert notes.state is FileState.REJECTED
    assert "unsupported file name" in (notes.error or "")
    for record in (half, notes):
        moved = Path(record.path)
        assert moved.parent == burst.inbox / "rejected"
        assert record.error in moved.with_name(moved.name + ".reason.txt").read_text()
    assert {e["file"] for e in burst.events("file_rejected")} == {"half.jsonl", "notes.txt"}


def test_a_batch_that_cannot_be_recorded_stays_in_the_inbox_whole(
    burst: Burst, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        burst.put(f"drop-{i}.jsonl", lines(f"drop {i}"))

    def broken(drops: object) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(burst.ledger, "record_drops", broken)
    assert burst.take() == []
    assert len(list(burst.inbox.glob("*.jsonl"))) == 5
    monkeypatch.undo()
    assert len(burst.take()) == 5
    assert burst.ledger.counts_by_state()[FileState.QUEUED] == 5


def test_paths_that_could_not_be_noted_are_repaired_at_the_next_rescan(
    burst: Burst, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        burst.put(f"drop-{i}.jsonl", lines(f"drop {i}"))

    def broken(paths: object) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(burst.ledger, "set_paths", broken)
    assert burst.take() == []
    records = burst.ledger.list_files()[0]
    assert {Path(r.path).parent for r in records} == {burst.inbox}  # moved, not noted
    assert burst.events("file_queued") == [] and burst.wakes == []
    monkeypatch.undo()
    assert burst.take() == []  # the rescan repairs them; nothing is left to take
    for record in burst.ledger.list_files()[0]:
        assert Path(record.path).parent == burst.inbox / "accepted"
        assert Path(record.path).is_file()
    assert sorted(e["file"] for e in burst.events("file_queued")) == [
        f"drop-{i}.jsonl" for i in range(3)
    ]


CHILD = """
import sys
from pathlib import Path
from service.config.sections import WatcherSection
from service.inbox.filing import BatchLimits
from service.inbox.watcher import InboxWatcher
from service.ledger import Ledger
from trainer.records.events import EventLog

root = Path(sys.argv[1])
ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
watcher = InboxWatcher(
    root / "inbox",
    ledger=ledger,
    settings=WatcherSection(settle_s=0.2, rescan_interval_s=60.0),
    events=EventLog(root / "events.jsonl"),
    batch_limits=BatchLimits(max_files=256, max_wait_s=60.0),
)
watcher.layout.create()
watcher.rescan()
watcher.process_ready(1e12)
"""


@pytest.mark.parametrize(
    "point",
    [
        "intake:recorded",  # the batch committed, nothing moved
        "intake:moved@4",  # four files moved, their paths never noted
        "intake:placed",  # every path noted, the events not yet written
    ],
)
def test_a_crash_between_the_writes_of_a_batch_loses_nothing_and_queues_nothing_twice(
    tmp_path: Path, point: str
) -> None:
    names = [f"drop-{i:02d}.jsonl" for i in range(12)]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, name in enumerate(names):
        (inbox / name).write_text(lines(f"drop {i}"))
    (inbox / "twin.jsonl").write_text(lines("drop 0"))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "TRAIND_FAULT": point},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    events = EventLog(tmp_path / "events.jsonl")
    assert not events.path.exists() or events.last("file_queued") is None

    burst = Burst(tmp_path)
    try:
        burst.watcher.start()
        burst.watcher.process_ready(1e12)
        records = burst.ledger.list_files(limit=100)[0]
    finally:
        burst.close()
    # Every drop recorded exactly once, each where its record says, with its content.
    assert sorted(r.name for r in records) == sorted([*names, "twin.jsonl"])
    by_name = {r.name: r for r in records}
    assert {by_name[n].state for n in names} == {FileState.QUEUED}
    twin = by_name["twin.jsonl"]
    assert (twin.state, twin.duplicate_of) == (FileState.DUPLICATE, by_name[names[0]].id)
    for i, name in enumerate(names):
        assert Path(by_name[name].path).read_text() == lines(f"drop {i}")
        assert Path(by_name[name].path).parent == inbox / "accepted"
    assert sorted(p.name for p in inbox.iterdir()) == ["accepted", "duplicates", "rejected"]
    # Announced once each, unless the crash came after the paths were noted: then the
    # records are complete and their events are what the crash cut off.
    queued = [e["file"] for e in burst.events("file_queued")]
    if point == "intake:placed":
        assert queued == []
    else:
        assert sorted(queued) == sorted(names)
