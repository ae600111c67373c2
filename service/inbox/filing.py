"""Filing checked drops: recorded in the ledger a batch at a time, moved, announced.

A burst of drops costs two ledger transactions per batch, not two per file, and the
moved files' folders are fsynced once per batch. The order keeps every drop safe
whatever crashes between two writes:

1. one transaction records every drop of the batch (``Ledger.record_drops``), each
   under its top-level path; duplicates are decided there, as one by one;
2. each file is renamed to its sub-folder, then the folders are fsynced once;
3. one transaction notes every new path (``Ledger.set_paths``);
4. only then is each announced (``file_queued`` ...), and the watcher wakes the worker.

A crash before 1 commits leaves the files unrecorded at the top level: the startup
rescan checks them again. A crash after 1 and before 3 leaves records whose path is the
top level: a file still there is moved by ``Intake.finish_interrupted`` (never recorded
twice), and one already moved has its path repaired by :meth:`Filing.repair_paths` when
the watcher starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.inbox.layout import (
    InboxLayout,
    filed_candidates,
    move_file,
    reason_path,
    sync_folders,
    write_text_atomic,
)
from service.inbox.names import printable_name, recorded_path
from service.inbox.reasons import reason_text
from service.inbox.verdict import Verdict
from service.ledger.drops import NewDrop
from service.ledger.records import FileRecord, FileState
from trainer.faults import fault_point
from trainer.records.events import EventLog
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)


_INTAKE_STATES = (FileState.QUEUED, FileState.DUPLICATE, FileState.REJECTED)
"""The states intake gives a drop: those its events announce."""


@dataclass(frozen=True)
class BatchLimits:
    """How the watcher groups checked drops into one ledger transaction."""

    max_files: int = 256
    """The most drops one transaction records (it bounds how long the first waits)."""
    max_wait_s: float = 0.05
    """How long the first checked drop of a batch waits for more before it is recorded."""
    large_bytes: int = 4 * 2**20
    """A file this large is checked only once the batch before it is recorded: checking
    it takes long, and the drops checked already would wait for it."""


class Batch:
    """Checked drops waiting to be recorded together, and when to record them."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self.verdicts: list[Verdict] = []
        self._opened = 0.0

    def add(self, verdict: Verdict) -> bool:
        """Add ``verdict``; whether the batch is to be recorded now."""
        if not self.verdicts:
            self._opened = time.monotonic()
        self.verdicts.append(verdict)
        return (
            len(self.verdicts) >= self.limits.max_files
            or time.monotonic() - self._opened >= self.limits.max_wait_s
        )

    def due_before(self, size: int) -> bool:
        """Whether to record the batch before checking a file of ``size`` bytes."""
        return bool(self.verdicts) and size >= self.limits.large_bytes

    def take(self) -> list[Verdict]:
        """The verdicts to record, leaving the batch empty."""
        taken, self.verdicts = self.verdicts, []
        return taken


@dataclass(frozen=True)
class Filed:
    """What filing a batch did."""

    records: tuple[FileRecord, ...]
    """The drops recorded, moved and announced, in the order given."""
    unplaced: tuple[Path, ...]
    """Drops recorded but not moved: they stay at the top level for the next rescan."""


class Filing:
    """Records checked drops in the ledger, moves them to their sub-folder, announces them."""

    def __init__(self, layout: InboxLayout, *, ledger: Any, events: EventLog) -> None:
        self.layout = layout
        self.ledger = ledger
        self.events = events
        self.paths_stale = False
        """Set when moved files' new paths could not be noted: repair at the next rescan."""

    def file(self, verdicts: Sequence[Verdict]) -> Filed:
        """Record ``verdicts`` in one transaction, move their files, note the paths in a
        second, then announce them. Raises, with nothing recorded, if the first fails."""
        records = self.ledger.record_drops([_drop_of(verdict) for verdict in verdicts])
        fault_point("intake:recorded")
        moved: list[tuple[FileRecord, Path]] = []
        unplaced: list[Path] = []
        for record, verdict in zip(records, verdicts, strict=True):
            try:
                moved.append((record, self._move(record, verdict.path)))
            except Exception:
                # Recorded under its top-level path: finish_interrupted completes it later.
                log.exception(
                    "could not move %s (id %d); it stays in the inbox until the next rescan",
                    printable_name(str(verdict.path)),
                    record.id,
                )
                unplaced.append(verdict.path)
            fault_point("intake:moved")
        sync_folders([self.layout.root, *(target.parent for _, target in moved)])
        try:
            self.ledger.set_paths({record.id: str(target) for record, target in moved})
        except Exception:
            self.paths_stale = True
            log.exception(
                "recorded and moved %d file(s) but could not note where they went; the "
                "paths are repaired at the next rescan",
                len(moved),
            )
            return Filed(records=(), unplaced=tuple(unplaced))
        fault_point("intake:placed")
        placed = tuple(dataclasses.replace(r, path=str(target)) for r, target in moved)
        self.announce(*placed)
        return Filed(records=placed, unplaced=tuple(unplaced))

    def place(self, record: FileRecord, path: Path) -> FileRecord:
        """Move ``record``'s file from ``path`` to its sub-folder and update the ledger path."""
        target = self._move(record, path)
        sync_folders([path.parent, target.parent])
        self.ledger.set_path(record.id, str(target))
        return dataclasses.replace(record, path=str(target))

    def repair_paths(self) -> int:
        """Note the new path of every file recorded at the top level that was moved, but
        whose path was never updated (a crash, or a failed write, between the two), and
        announce it (it never was: that comes after the path); return how many were
        repaired. A file still at the top level is left to the rescan
        (``Intake.finish_interrupted``)."""
        repaired = []
        for record in self.ledger.files_in(str(self.layout.root)):
            if os.path.lexists(record.path):
                continue
            target = next(
                (p for p in filed_candidates(self.layout.destination(record)) if holds(record, p)),
                None,
            )
            if target is None:
                log.debug("file %d is neither at %s nor filed away", record.id, record.path)
                continue
            self.ledger.set_path(record.id, str(target))
            log.warning("repaired the path of file %d: it is %s", record.id, target)
            repaired.append(dataclasses.replace(record, path=str(target)))
        self.paths_stale = False
        # One the worker took up since was announced in effect (and is not queued now).
        self.announce(*(r for r in repaired if r.state in _INTAKE_STATES))
        return len(repaired)

    def announce(self, *records: FileRecord) -> None:
        """Append the events that say what became of ``records``, in one write and one
        fsync (never raises)."""
        if not records:
            return
        for record in records:
            if record.state is FileState.REJECTED:
                # A person must act on it; a queued or duplicate file has its one log
                # line from the ledger as it is recorded (Ledger.record_drops).
                log.warning("rejected %s (id %d): %s", record.name, record.id, record.error)
        try:
            self.events.emit_many([_describe(record) for record in records])
        except Exception:
            # The files are recorded and filed away; a full disk must not make them look untaken.
            log.exception(
                "could not write the events for files %s to the event log",
                ", ".join(str(record.id) for record in records),
            )

    def _move(self, record: FileRecord, path: Path) -> Path:
        destination = self.layout.destination(record)
        if record.state is FileState.REJECTED:
            # Before the move: a crash after it would leave the file out of the rescan's
            # reach without its reason.
            write_text_atomic(reason_path(destination), reason_text(record))
        target = move_file(path, destination, sync=False)
        log.debug("moved %s to %s", record.name, target)
        return target


def _describe(record: FileRecord) -> tuple[str, dict[str, Any]]:
    """The event that says what became of ``record``, and its fields."""
    if record.state is FileState.REJECTED:
        return "file_rejected", {
            "id": record.id,
            "file": record.name,
            "sha256": record.sha256,
            "reason": record.error,
            "lines": [p.line for p in record.invalid_lines if p.line is not None],
        }
    if record.state is FileState.DUPLICATE:
        return "file_duplicate", {
            "id": record.id,
            "file": record.name,
            "sha256": record.sha256,
            "duplicate_of": record.duplicate_of,
        }
    return "file_queued", {
        "id": record.id,
        "file": record.name,
        "sha256": record.sha256,
        "format": record.format,
        "n_examples": record.n_examples,
        "size": record.size,
    }


def holds(record: FileRecord, path: Path | str) -> bool:
    """Whether ``path`` holds the very file ``record`` describes."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    if record.sha256 is None:
        # Never hashed (a link, a FIFO, a file over the size limit): it was rejected, and the
        # same name and size is the best evidence left.
        return record.state is FileState.REJECTED and record.size == now.st_size
    if not stat.S_ISREG(now.st_mode) or now.st_size != record.size:
        return False
    return file_sha256(path) == record.sha256


def _drop_of(verdict: Verdict) -> NewDrop:
    name = printable_name(verdict.path.name)
    return NewDrop(
        name=name,
        path=recorded_path(verdict.path),
        sha256=verdict.sha256,
        size=verdict.size,
        format=verdict.format,
        n_examples=verdict.n_examples,
        n_invalid=verdict.n_invalid,
        invalid_lines=verdict.invalid_lines,
        reason=None if verdict.accepted else (verdict.reason or "rejected"),
    )
