"""The inbox watcher with a real watchdog observer on a temp inbox and a real SQLite ledger."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import service.inbox.intake
import service.inbox.observer
from service.config.sections import WatcherSection
from service.inbox.arrivals import Arrivals
from service.inbox.observer import Note
from service.inbox.watcher import MAX_ATTEMPTS, InboxWatcher
from service.ledger import FileState, Ledger
from service.ledger.records import FileRecord
from trainer.records.events import EventLog
from trainer.records.formats import validate_file

SETTLE_S = 0.2
LINUX = Path("/proc/self/fdinfo").is_dir()


def lines(*texts: str) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


class Rig:
    """A ledger, an event log and watchers on ``tmp/inbox``, stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.staging = root / "staging"
        self.staging.mkdir()
        self.ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
        self.events = EventLog(root / "events.jsonl")
        self.watchers: list[InboxWatcher] = []

    def watcher(self, **settings: object) -> InboxWatcher:
        section = WatcherSection(**{"settle_s": SETTLE_S, "rescan_interval_s": 60.0, **settings})
        watcher = InboxWatcher(self.inbox, ledger=self.ledger, settings=section, events=self.events)
        self.watchers.append(watcher)
        return watcher

    def drop(self, name: str, text: str) -> Path:
        """Write elsewhere, then rename into the inbox (the recommended way)."""
        staged = self.staging / name
        staged.write_text(text, encoding="utf-8")
        target = self.inbox / name
        staged.rename(target)
        return target

    def records(self) -> list[FileRecord]:
        return self.ledger.list_files(limit=1000)[0]

    def record(self, name: str) -> FileRecord:
        (found,) = [r for r in self.records() if r.name == name]
        return found

    def event_log(self) -> list[dict]:
        path = self.root / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        self.ledger.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(0.02)


def wait_placed(rig: Rig, count: int = 1, timeout: float = 10.0) -> list[FileRecord]:
    """Wait until ``count`` files are recorded and moved out of the top level (in that order)."""

    def placed() -> bool:
        records = rig.records()
        return len(records) == count and all(Path(r.path).parent != rig.inbox for r in records)

    wait_for(placed, timeout)
    return rig.records()


def events_of(rig: Rig, kind: str) -> list[dict]:
    """The events of one kind, once there is one: intake writes it just after the move,
    so a test that saw the file placed may look before it is there."""

    def found() -> list[dict]:
        return [e for e in rig.event_log() if e["event"] == kind]

    wait_for(found)
    return found()


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_a_renamed_in_file_is_queued_at_once_and_moved(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.start()
    started = time.monotonic()
    rig.drop("day1.jsonl", lines("a", "b"))
    wait_placed(rig)
    elapsed = time.monotonic() - started
    (record,) = rig.records()
    assert record.state is FileState.QUEUED
    assert (record.format, record.n_examples) == ("text", 2)
    moved = rig.inbox / "accepted" / f"{record.id:06d}-day1.jsonl"
    assert record.path == str(moved)
    assert moved.read_text() == lines("a", "b")
    assert not (rig.inbox / "day1.jsonl").exists()
    # A rename is ready at once, no settle wait (the bound is generous for slow CI).
    assert elapsed < 2.0
    (event,) = events_of(rig, "file_queued")
    assert event["id"] == record.id
    assert event["file"] == "day1.jsonl"
    assert event["sha256"] == record.sha256
    assert (event["format"], event["n_examples"], event["size"]) == ("text", 2, record.size)


def test_a_file_written_in_place_is_taken_once_closed_and_settled(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.start()
    (rig.inbox / "direct.jsonl").write_text(lines("x"))
    wait_placed(rig)
    assert rig.record("direct.jsonl").state is FileState.QUEUED


@pytest.mark.skipif(not LINUX, reason="the writer check reads /proc")
def test_a_file_held_open_is_not_taken_until_its_writer_closes_it(rig: Rig) -> None:
    # A short rescan interval: the fallback for missing close events and the rescans both
    # come and go while the file is open, and neither may take it.
    watcher = rig.watcher(rescan_interval_s=0.3)
    watcher.start()
    path = rig.inbox / "slow.jsonl"
    with path.open("w") as handle:
        handle.write(lines("first"))
        handle.flush()
        time.sleep(SETTLE_S + 0.3 * 3)
        assert rig.records() == []
        assert path.exists()
        assert watcher.health()["files_pending"] == 1
        handle.write(lines("second"))
    wait_placed(rig)
    record = rig.record("slow.jsonl")
    assert (record.state, record.n_examples) == (FileState.QUEUED, 2)


def test_polling_mode_takes_renamed_and_in_place_files(rig: Rig) -> None:
    watcher = rig.watcher(polling=True)
    watcher.start()
    assert watcher.health()["mode"] == "polling"
    rig.drop("renamed.jsonl", lines("r"))
    (rig.inbox / "in-place.jsonl").write_text(lines("p"))
    wait_placed(rig, 2)
    assert {r.name: r.state for r in rig.records()} == {
        "renamed.jsonl": FileState.QUEUED,
        "in-place.jsonl": FileState.QUEUED,
    }
    assert watcher.health()["observer_alive"]


def test_without_inotify_the_watcher_falls_back_to_polling(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def exhausted(*args: object) -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(service.inbox.observer, "_native_watch", exhausted)
    watcher = rig.watcher()
    watcher.start()
    assert watcher.health()["mode"] == "polling"
    assert any("polling it every" in r.getMessage() for r in caplog.records)
    (rig.inbox / "in-place.jsonl").write_text(lines("p"))
    wait_placed(rig)
    assert rig.record("in-place.jsonl").state is FileState.QUEUED


def test_files_present_at_start_are_found_by_the_initial_rescan(rig: Rig) -> None:
    rig.inbox.mkdir()
    (rig.inbox / "old1.jsonl").write_text(lines("1"))
    (rig.inbox / "old2.jsonl").write_text(lines("2"))
    watcher = rig.watcher()
    watcher.start()
    assert {p.name for p in rig.inbox.iterdir()} >= {"accepted", "rejected", "duplicates"}
    wait_placed(rig, 2)
    assert {r.state for r in rig.records()} == {FileState.QUEUED}


def test_the_periodic_rescan_catches_files_whose_events_were_missed(rig: Rig) -> None:
    watcher = rig.watcher(rescan_interval_s=0.5)
    watcher.start()
    observer = watcher._observer
    assert observer is not None
    # The observer stays alive but hears nothing, like an overflowed inotify queue.
    observer.unschedule_all()
    rig.drop("missed.jsonl", lines("m"))
    wait_placed(rig)
    assert rig.record("missed.jsonl").state is FileState.QUEUED
    assert watcher.health()["observer_restarts"] == 0


def test_rescan_then_process_ready_is_a_deterministic_step(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.layout.create()
    (rig.inbox / "a.jsonl").write_text(lines("a"))
    assert watcher.process_ready(later()) == []  # no event was heard: nothing known yet
    assert watcher.rescan() == ["a.jsonl"]
    now = time.monotonic()
    assert watcher.process_ready(now) == []  # first look: not settled yet
    assert watcher.process_ready(now + SETTLE_S / 2) == []
    (record,) = watcher.process_ready(now + SETTLE_S + 0.01)
    assert (record.name, record.state) == ("a.jsonl", FileState.QUEUED)
    assert watcher.rescan() == []


def test_a_dead_observer_is_restarted_and_a_rescan_runs(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = rig.watcher()
    watcher.start()
    observer = watcher._observer
    assert observer is not None
    observer.stop()
    observer.join()
    (rig.inbox / "during.jsonl").write_text(lines("d"))
    wait_placed(rig)
    assert watcher.health()["observer_restarts"] == 1
    assert watcher.health()["observer_alive"]
    assert any(
        r.levelno == logging.ERROR and "observer stopped" in r.getMessage() for r in caplog.records
    )
    rig.drop("after.jsonl", lines("after"))
    wait_placed(rig, 2)


def test_the_same_content_twice_is_a_duplicate_moved_to_duplicates(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.start()
    rig.drop("first.jsonl", lines("same"))
    wait_placed(rig)
    rig.drop("second.jsonl", lines("same"))
    wait_placed(rig, 2)
    first, second = rig.record("first.jsonl"), rig.record("second.jsonl")
    assert second.state is FileState.DUPLICATE
    assert second.duplicate_of == first.id
    assert second.path == str(rig.inbox / "duplicates" / f"{second.id:06d}-second.jsonl")
    assert Path(second.path).read_text() == lines("same")
    (event,) = events_of(rig, "file_duplicate")
    assert (event["id"], event["file"], event["duplicate_of"]) == (
        second.id,
        "second.jsonl",
        first.id,
    )


def test_ignored_names_are_left_alone_until_renamed(rig: Rig) -> None:
    watcher = rig.watcher(rescan_interval_s=0.3)
    watcher.start()
    ignored = [".hidden.jsonl", "upload.jsonl.tmp", "download.jsonl.part", ".x.jsonl.tmp"]
    for name in ignored:
        (rig.inbox / name).write_text(lines(name))
    folders = [".git", "export.jsonl.part"]  # a hidden folder, one still being filled
    for name in folders:
        (rig.inbox / name).mkdir()
        (rig.inbox / name / "inner.jsonl").write_text(lines("inner"))
    rig.drop("marker.jsonl", lines("marker"))
    wait_placed(rig)
    time.sleep(0.3 * 2 + SETTLE_S)  # rescans and settle times pass
    assert watcher.process_ready(later()) == []
    assert [r.name for r in rig.records()] == ["marker.jsonl"]
    for name in ignored:
        assert (rig.inbox / name).read_text() == lines(name)
    for name in folders:
        assert (rig.inbox / name / "inner.jsonl").exists()
    (rig.inbox / "upload.jsonl.tmp").rename(rig.inbox / "upload.jsonl")
    wait_placed(rig, 2)
    assert rig.record("upload.jsonl").state is FileState.QUEUED


def write_raw(path: bytes, data: bytes) -> None:
    """Create a file under a name given as bytes (any bytes, UTF-8 or not)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


NOT_UTF8_REASON = (
    "day\\xff1.jsonl: the file name is not valid UTF-8 (byte 0xff at byte 4; each such byte "
    "is shown here as \\xNN); rename it with a UTF-8 name and drop it again"
)


def test_a_non_utf8_name_is_rejected_once_not_retried_with_a_traceback_forever(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = rig.watcher(rescan_interval_s=0.3)
    watcher.start()
    staged = bytes(rig.staging) + b"/day\xff1.jsonl"
    write_raw(staged, lines("fine content").encode())
    os.rename(staged, bytes(rig.inbox) + b"/day\xff1.jsonl")
    (record,) = wait_placed(rig)
    assert record.state is FileState.REJECTED
    assert record.name == "day\\xff1.jsonl"  # printable text, valid UTF-8
    assert record.error == NOT_UTF8_REASON
    kept = rig.inbox / "rejected" / f"{record.id:06d}-day\\xff1.jsonl"
    assert record.path == str(kept)
    assert kept.read_text() == lines("fine content")  # kept as dropped
    reason = kept.with_name(kept.name + ".reason.txt").read_text(encoding="utf-8")
    assert f"reason: {NOT_UTF8_REASON}" in reason
    assert sorted(p.name for p in rig.inbox.iterdir()) == ["accepted", "duplicates", "rejected"]
    (event,) = events_of(rig, "file_rejected")
    assert (event["id"], event["file"], event["reason"]) == (record.id, record.name, record.error)
    time.sleep(0.3 * 2 + SETTLE_S)  # rescans pass: nothing is taken or logged again
    assert watcher.rescan() == []
    assert watcher.process_ready(later()) == []
    assert len(rig.records()) == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_non_utf8_name_recorded_just_before_a_crash_is_moved_not_recorded_twice(
    rig: Rig,
) -> None:
    watcher = rig.watcher()
    watcher.layout.create()
    write_raw(bytes(rig.inbox) + b"/day\xff1.jsonl", lines("c").encode())
    # What a crash between the ledger write and the move leaves behind.
    rig.ledger.record_rejected(
        name="day\\xff1.jsonl",
        path=str(rig.inbox / "day\\xff1.jsonl"),
        reason=NOT_UTF8_REASON,
        size=len(lines("c")),
    )
    watcher.rescan()
    (record,) = watcher.process_ready(later())
    assert [r.id for r in rig.records()] == [record.id]
    kept = rig.inbox / "rejected" / f"{record.id:06d}-day\\xff1.jsonl"
    assert record.path == str(kept) and kept.read_text() == lines("c")
    assert kept.with_name(kept.name + ".reason.txt").exists()


def test_a_long_non_utf8_name_still_fits_in_rejected_with_its_reason_file(rig: Rig) -> None:
    # Each bad byte takes four characters once escaped: 250 of them would make a name far
    # over the 255-byte limit, and the move would fail at every rescan.
    watcher = rig.watcher()
    watcher.layout.create()
    write_raw(bytes(rig.inbox) + b"/" + b"\xe9" * 240 + b".jsonl", lines("x").encode())
    watcher.rescan()
    (record,) = watcher.process_ready(later())
    assert record.state is FileState.REJECTED
    assert len(record.name.encode()) <= 200
    assert record.name.startswith("\\xe9\\xe9") and record.name.endswith("\\xe9.jsonl")
    kept = Path(record.path)
    assert kept.parent == rig.inbox / "rejected"
    assert kept.read_text() == lines("x")
    assert kept.with_name(kept.name + ".reason.txt").exists()
    assert "the file name is not valid UTF-8 (byte 0xe9 at byte 1;" in (record.error or "")


def test_a_long_name_is_filed_under_a_name_that_fits_beside_its_reason(rig: Rig) -> None:
    """A 250-byte UTF-8 name is valid, but ``<id>-<name>.reason.txt`` would not fit in a
    file name: before, writing the reason failed with a traceback at every rescan."""
    watcher = rig.watcher()
    watcher.layout.create()
    name = "é" * 120 + ".jsonl"  # 246 bytes
    (rig.inbox / name).write_text("not json\n")
    watcher.rescan()
    (record,) = watcher.process_ready(later())
    assert record.state is FileState.REJECTED and record.name == name
    kept = Path(record.path)
    assert kept.parent == rig.inbox / "rejected" and kept.read_text() == "not json\n"
    assert kept.name.endswith(".jsonl") and kept.name.startswith("000001-éé")
    reason = kept.with_name(kept.name + ".reason.txt")
    assert reason.exists() and len(reason.name.encode()) <= 255
    assert not list(rig.inbox.glob("*.jsonl"))


FOLDER_REASON = (
    "batch is a folder; traind takes files, not folders: move the *.jsonl files inside it "
    "into the inbox"
)


def test_a_folder_renamed_into_the_inbox_is_rejected_whole_not_silently_ignored(
    rig: Rig,
) -> None:
    watcher = rig.watcher(rescan_interval_s=0.3)
    watcher.start()
    staged = rig.staging / "batch"
    staged.mkdir()
    (staged / "day1.jsonl").write_text(lines("one"))
    (staged / "nested").mkdir()
    (staged / "nested" / "day2.jsonl").write_text(lines("two"))
    staged.rename(rig.inbox / "batch")
    (record,) = wait_placed(rig)
    assert (record.name, record.state, record.error) == (
        "batch",
        FileState.REJECTED,
        FOLDER_REASON,
    )
    kept = rig.inbox / "rejected" / f"{record.id:06d}-batch"
    assert record.path == str(kept)
    assert (kept / "day1.jsonl").read_text() == lines("one")  # moved whole, nothing lost
    assert (kept / "nested" / "day2.jsonl").read_text() == lines("two")
    reason = kept.with_name(kept.name + ".reason.txt").read_text(encoding="utf-8")
    assert f"reason: {FOLDER_REASON}" in reason
    assert sorted(p.name for p in rig.inbox.iterdir()) == ["accepted", "duplicates", "rejected"]
    (event,) = events_of(rig, "file_rejected")
    assert (event["file"], event["reason"]) == ("batch", FOLDER_REASON)
    time.sleep(0.3 * 2)  # rescans pass; traind's own folders are never taken
    assert len(rig.records()) == 1


def test_a_folder_being_filled_in_place_is_taken_only_once_it_has_settled(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.layout.create()
    folder = rig.inbox / "batch"
    folder.mkdir()
    assert watcher.rescan() == ["batch"]
    now = time.monotonic()
    assert watcher.process_ready(now) == []
    time.sleep(0.05)  # past the file system's timestamp granularity
    (folder / "day1.jsonl").write_text(lines("one"))  # a new entry changes the folder's mtime
    assert watcher.process_ready(now + SETTLE_S * 0.75) == []
    assert watcher.process_ready(now + SETTLE_S + 0.01) == []  # still within its new quiet time
    (record,) = watcher.process_ready(now + SETTLE_S * 1.75 + 0.01)
    assert (record.name, record.state, record.error) == (
        "batch",
        FileState.REJECTED,
        FOLDER_REASON,
    )
    assert (Path(record.path) / "day1.jsonl").read_text() == lines("one")


def test_a_folder_event_starts_the_settle_time_as_for_a_file_found_by_a_rescan(
    rig: Rig,
) -> None:
    # Folder notes carry no close event; waiting for one would hold the folder until the
    # fallback (the rescan interval) instead of the settle time.
    watcher = rig.watcher(rescan_interval_s=60.0)
    watcher.layout.create()
    (rig.inbox / "batch").mkdir()
    now = time.monotonic()
    watcher._notes.append(Note("created", str(rig.inbox / "batch"), "", True, now))
    for own in ("accepted", "rejected", "duplicates"):
        watcher._notes.append(Note("modified", str(rig.inbox / own), "", True, now))
    assert watcher.process_ready(now) == []
    (record,) = watcher.process_ready(now + SETTLE_S + 0.01)
    assert (record.name, record.error) == ("batch", FOLDER_REASON)


def test_a_failing_check_does_not_stop_the_watcher(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def flaky(path: Path, **kwargs: object):
        calls.append(Path(path).name)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return validate_file(path, **kwargs)

    monkeypatch.setattr(service.inbox.intake, "validate_file", flaky)
    watcher = rig.watcher()
    watcher.start()
    rig.drop("unlucky.jsonl", lines("u"))
    wait_for(lambda: calls)
    rig.drop("next.jsonl", lines("n"))
    wait_placed(rig)
    assert [r.name for r in rig.records()] == ["next.jsonl"]
    assert (rig.inbox / "unlucky.jsonl").exists()  # left in place for the next rescan
    assert watcher.health()["running"]
    failure = [r for r in caplog.records if "checking" in r.getMessage() and r.exc_info]
    assert failure and "unlucky.jsonl" in failure[0].getMessage()
    watcher.rescan()
    wait_placed(rig, 2)
    assert rig.record("unlucky.jsonl").state is FileState.QUEUED


def test_a_file_whose_check_keeps_failing_is_rejected_with_the_error(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, **kwargs: object):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service.inbox.intake, "validate_file", broken)
    watcher = rig.watcher()
    watcher.layout.create()
    (rig.inbox / "cursed.jsonl").write_text(lines("c"))
    for _ in range(MAX_ATTEMPTS - 1):
        watcher.rescan()
        assert watcher.process_ready(later()) == []
        assert (rig.inbox / "cursed.jsonl").exists()
    watcher.rescan()
    (record,) = watcher.process_ready(later())
    assert record.state is FileState.REJECTED
    assert "could not be checked (3 attempts" in (record.error or "")
    assert "Input/output error" in (record.error or "")
    assert Path(record.path).parent == rig.inbox / "rejected"


def test_an_interrupted_move_is_finished_without_a_second_record(rig: Rig) -> None:
    rig.inbox.mkdir()
    path = rig.inbox / "crashed.jsonl"
    path.write_text(lines("c1", "c2"))
    report = validate_file(path)
    # What a crash between the ledger write and the move leaves behind.
    rig.ledger.record_file(
        name=path.name,
        path=str(path),
        sha256=report.sha256,
        size=report.size,
        format=report.format,
        n_examples=report.n_examples,
    )
    watcher = rig.watcher()
    watcher.start()
    wait_placed(rig)
    (record,) = rig.records()
    assert record.state is FileState.QUEUED
    assert record.path == str(rig.inbox / "accepted" / f"{record.id:06d}-crashed.jsonl")
    assert Path(record.path).read_text() == lines("c1", "c2")


def test_an_interrupted_rejection_is_finished_with_its_reason_file(rig: Rig) -> None:
    rig.inbox.mkdir()
    path = rig.inbox / "bad.jsonl"
    path.write_text("not json\n")
    rig.ledger.record_rejected(
        name=path.name, path=str(path), reason="bad.jsonl line 1: is not valid JSON", size=9
    )
    watcher = rig.watcher()
    watcher.start()
    wait_placed(rig)
    (record,) = rig.records()
    moved = rig.inbox / "rejected" / f"{record.id:06d}-bad.jsonl"
    assert record.path == str(moved)
    assert "is not valid JSON" in moved.with_name(moved.name + ".reason.txt").read_text()


def test_a_stale_path_is_repaired_and_a_new_file_of_that_name_recorded(rig: Rig) -> None:
    rig.inbox.mkdir()
    (rig.inbox / "accepted").mkdir()
    top = rig.inbox / "day.jsonl"
    # A crash after the move but before the path update: the record still says top level.
    old = rig.ledger.record_file(
        name="day.jsonl", path=str(top), sha256="0" * 64, size=5, format="text", n_examples=1
    )
    (rig.inbox / "accepted" / f"{old.id:06d}-day.jsonl").write_text("old\n")
    top.write_text(lines("new content"))
    watcher = rig.watcher()
    watcher.start()
    wait_placed(rig, 2)
    repaired = rig.ledger.get_file(old.id)
    assert repaired is not None
    assert repaired.path == str(rig.inbox / "accepted" / f"{old.id:06d}-day.jsonl")
    (new,) = [r for r in rig.records() if r.id != old.id]
    assert new.state is FileState.QUEUED
    assert Path(new.path).read_text() == lines("new content")


def test_a_batch_is_taken_by_mtime_then_name(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.layout.create()
    stamps = {"c.jsonl": 2_000, "a.jsonl": 2_000, "b.jsonl": 1_000, "d.jsonl": 3_000}
    for name, stamp in stamps.items():
        path = rig.inbox / name
        path.write_text(lines(name))
        os.utime(path, ns=(stamp * 10**9, stamp * 10**9))
    watcher.rescan()
    taken = watcher.process_ready(later())
    assert [r.name for r in taken] == ["b.jsonl", "a.jsonl", "c.jsonl", "d.jsonl"]
    assert [r.id for r in taken] == sorted(r.id for r in taken)


def test_a_file_that_vanishes_before_its_check_is_only_logged(rig: Rig) -> None:
    watcher = rig.watcher()
    watcher.layout.create()
    path = rig.inbox / "gone.jsonl"
    path.write_text(lines("g"))
    watcher.rescan()
    watcher.process_ready()
    path.unlink()
    assert watcher.process_ready(later()) == []
    assert rig.records() == []
    assert watcher.health()["files_pending"] == 0


def test_health_start_and_stop(rig: Rig) -> None:
    watcher = rig.watcher()
    assert watcher.health()["running"] is False
    watcher.start()
    with pytest.raises(RuntimeError, match="already running"):
        watcher.start()
    wait_for(lambda: watcher.health()["last_loop_at"] is not None)
    health = watcher.health()
    assert health["running"] and health["observer_alive"]
    assert health["files_pending"] == 0
    assert health["last_loop_age_s"] < 5
    watcher.stop()
    watcher.stop()
    assert not watcher.health()["running"]
    assert not watcher.health()["observer_alive"]


def test_readiness_rules() -> None:
    arrivals = Arrivals(settle_s=1.0, fallback_s=5.0, close_events=True)
    sig = (10, 1, 7)
    arrivals.renamed("moved", 0.0)
    arrivals.written("open", 0.0)
    arrivals.written("closed", 0.0)
    arrivals.closed("closed", 0.0)
    arrivals.found("found", 0.0)
    for name in arrivals.names():
        arrivals.observe(name, sig, 0.0)
    assert [a.name for a in arrivals.ready(0.0)] == ["moved"]
    assert [a.name for a in arrivals.ready(1.0)] == ["closed", "found", "moved"]
    assert "open" not in [a.name for a in arrivals.ready(4.9)]
    assert "open" in [a.name for a in arrivals.ready(5.0)]  # the close never came
    arrivals.observe("found", (11, 2, 7), 1.0)  # it grew: quiet time starts again
    assert "found" not in [a.name for a in arrivals.ready(1.5)]
    arrivals.observe("moved", (11, 2, 7), 1.0)  # written after its rename: settle like others
    assert "moved" not in [a.name for a in arrivals.ready(1.5)]
    assert "moved" in [a.name for a in arrivals.ready(2.0)]
    polling = Arrivals(settle_s=1.0, fallback_s=5.0, close_events=False)
    polling.written("p", 0.0)
    polling.observe("p", sig, 0.0)
    assert [a.name for a in polling.ready(1.0)] == ["p"]  # no close events: settle only
