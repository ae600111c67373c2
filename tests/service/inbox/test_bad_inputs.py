"""Bad input is a test corpus: every kind of bad drop, in one real watched inbox.

All the drops below (bad and good) go into one inbox watched by a real watchdog observer
with a real SQLite ledger, in one run. Each bad one must end ``rejected`` with a reason
naming what is wrong (and the line, where there is one), be kept under ``rejected/``
with its ``.reason.txt``, and be announced in the event log; the good ones dropped
alongside must still be queued.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.config.sections import WatcherSection
from service.inbox.names import is_utf8
from service.inbox.watcher import InboxWatcher
from service.ledger import FileState, Ledger
from service.ledger.records import FileRecord
from tests.badcorpus import (
    BAD,
    GOOD,
    IN_PLACE_GOOD,
    LINUX,
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    SETTLE_S,
    TEXT,
    Bad,
    drop,
    jl,
)
from trainer.records.events import EventLog


@dataclass
class Run:
    """The outcome of dropping the whole corpus into one watched inbox."""

    inbox: Path
    records: dict[str, FileRecord]
    events: list[dict]


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
        for bad in BAD:
            drop(staging, inbox, bad.name, data=bad.data, make=bad.make, in_place=bad.in_place)
        for name, data in GOOD.items():
            drop(staging, inbox, name, data=data, make=None, in_place=name in IN_PLACE_GOOD)
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
    record = run.records[bad.recorded_name]
    assert record.state is FileState.REJECTED
    assert record.error is not None
    assert bad.reason in record.error
    assert bad.recorded_name in record.error  # the reason names the file
    if bad.line is not None:
        assert f"line {bad.line}" in record.error
        assert bad.line in [p.line for p in record.invalid_lines]
    kept = run.inbox / "rejected" / f"{record.id:06d}-{bad.recorded_name}"
    assert record.path == str(kept)
    assert os.path.lexists(kept)
    assert not os.path.lexists(run.inbox / bad.name)
    if bad.data is not None:
        assert kept.read_bytes() == bad.data  # kept as dropped, byte for byte
    reason = kept.with_name(kept.name + ".reason.txt").read_text(encoding="utf-8")
    assert bad.reason in reason
    if bad.line is not None:
        assert f"line {bad.line}:" in reason
    (event,) = [
        e for e in run.events if e["event"] == "file_rejected" and e["file"] == bad.recorded_name
    ]
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


def test_a_folder_is_rejected_whole_and_what_is_inside_is_kept_unrecorded(run: Run) -> None:
    kept = Path(run.records["folder.jsonl"].path)
    assert kept.is_dir()
    assert (kept / "inside.jsonl").read_bytes() == jl(TEXT)
    assert "inside.jsonl" not in run.records


def test_a_name_that_is_not_utf8_is_kept_under_a_utf8_name(run: Run) -> None:
    kept = Path(run.records["day\\xff1.jsonl"].path)
    assert kept.name.endswith("-day\\xff1.jsonl")
    beside = sorted(p.name for p in kept.parent.iterdir() if p.name.startswith(kept.name))
    assert beside == [kept.name, kept.name + ".reason.txt"]
    assert all(is_utf8(p.name) for p in kept.parent.iterdir())


def test_nothing_but_traind_s_folders_remains_at_the_top_level(run: Run) -> None:
    left = sorted(p.name for p in run.inbox.iterdir())
    assert left == ["accepted", "duplicates", "rejected"]


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
