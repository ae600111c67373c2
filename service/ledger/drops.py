"""Ledger queries that record checked drops, many in one transaction, and file them away.

A burst of drops must not cost one durable commit each: the watcher records every drop
it has checked in one transaction (:meth:`DropQueries.record_drops`), moves the files,
then notes all their new paths in a second one (:meth:`DropQueries.set_paths`). Whether
a drop is a duplicate is decided inside the recording transaction, against the ledger
and against the drops before it in the same batch, exactly as if each had been recorded
on its own in order.

Part of ``Ledger`` (through ``FileQueries``); see ``service.ledger.ledger``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.ledger.models import FileRow
from service.ledger.records import ACTIVE_STATES, FileRecord, FileState, LineProblem
from service.ledger.store import Store, utcnow

log = logging.getLogger(__name__)

# How a duplicate's error describes the file it duplicates, by that file's state.
_TWIN_STATUS = {
    FileState.QUEUED: "still queued",
    FileState.TRAINING: "training now",
    FileState.DONE: "already done",
}
_PATHS_PER_QUERY = 500
"""Paths looked up per query (SQLite limits the parameters of one statement)."""


@dataclass(frozen=True, kw_only=True)
class NewDrop:
    """A checked drop to record (the fields mean what they mean in ``FileRecord``)."""

    name: str
    """The name it arrived under."""
    path: str
    """Where it is now: the inbox top level, until it is moved."""
    sha256: str | None
    """Content hash; ``None`` if the file could not be read."""
    size: int
    """Bytes on disk."""
    format: str | None
    """Drop format, when one was recognised."""
    n_examples: int
    """Valid examples."""
    n_invalid: int = 0
    """Invalid lines."""
    invalid_lines: tuple[LineProblem, ...] = ()
    """The first invalid lines with their reasons."""
    priority: int = 0
    """Queue priority (highest first)."""
    reason: str | None = None
    """Why it is rejected; ``None`` for a valid drop (queued, or a duplicate)."""


class DropQueries(Store):
    """Recording checked drops in batches, and where their files went."""

    def record_drops(self, drops: Sequence[NewDrop]) -> list[FileRecord]:
        """Record ``drops`` in one transaction, in order; their records, in the same order.

        A valid drop is ``queued``, or ``duplicate`` when its content is already queued,
        training or done in the ledger, or belongs to an earlier valid drop of the batch.
        A drop with a ``reason`` is ``rejected``. Nothing is recorded if it fails.
        """
        if not drops:
            return []
        now = utcnow()
        with self._writing() as session:
            valid = sorted({d.sha256 for d in drops if d.reason is None and d.sha256})
            for sha256 in valid:  # in a fixed order: two batches never wait on each other
                self._lock_content(session, sha256)
            twins = active_twins(session, valid)
            rows, copies = [], []
            for drop in drops:
                row = _row_of(now, drop)
                rows.append(row)
                if drop.reason is not None or not drop.sha256:
                    continue
                twin = twins.setdefault(drop.sha256, row)
                if twin is not row:
                    copies.append((row, twin))
                    row.state = FileState.DUPLICATE.value
                    row.finished_at = now
            session.add_all(rows)
            session.flush()
            for row, twin in copies:
                # After the insert: a twin from this batch has its id only now.
                row.duplicate_of = twin.id
                row.error = (
                    f"same content as file #{twin.id} ({twin.name}), "
                    f"{_TWIN_STATUS[FileState(twin.state)]}"
                )
            session.flush()
            records = [row.record() for row in rows]
        for record in records:
            _log_recorded(record)
        return records

    def set_paths(self, paths: Mapping[int, str]) -> None:
        """Note where each file (by id) is now, in one transaction."""
        if not paths:
            return
        now = utcnow()
        changes = [{"id": i, "path": p, "updated_at": now} for i, p in paths.items()]
        with self._writing() as session:
            session.execute(update(FileRow), changes)

    def find_by_paths(self, paths: Iterable[str]) -> dict[str, FileRecord]:
        """The newest record of the file at each of ``paths`` that has one, by path."""
        wanted = sorted(set(paths))
        found: dict[str, FileRecord] = {}
        with self._reading() as session:
            for start in range(0, len(wanted), _PATHS_PER_QUERY):
                chunk = wanted[start : start + _PATHS_PER_QUERY]
                query = select(FileRow).where(FileRow.path.in_(chunk)).order_by(FileRow.id)
                found.update((row.path, row.record()) for row in session.scalars(query))
        return found

    def files_in(self, folder: str) -> list[FileRecord]:
        """The files recorded directly in ``folder`` (not below it), by id."""
        prefix = folder.rstrip(os.sep) + os.sep
        query = (
            select(FileRow)
            .where(FileRow.path.startswith(prefix, autoescape=True))
            .order_by(FileRow.id)
        )
        with self._reading() as session:
            rows = session.scalars(query)
            return [row.record() for row in rows if os.sep not in row.path[len(prefix) :]]


def active_twins(session: Session, hashes: Iterable[str]) -> dict[str, FileRow]:
    """The oldest queued, training or done file of each content hash that has one."""
    wanted = list(hashes)
    if not wanted:
        return {}
    query = (
        select(FileRow)
        .where(FileRow.sha256.in_(wanted))
        .where(FileRow.state.in_([state.value for state in ACTIVE_STATES]))
        .order_by(FileRow.id.desc())
    )
    # Newest first, so the oldest of each hash is the one left in the dictionary.
    return {row.sha256: row for row in session.scalars(query) if row.sha256}


def active_twin(session: Session, sha256: str | None) -> FileRow | None:
    """The oldest queued, training or done file with this content."""
    if not sha256:
        return None
    query = (
        select(FileRow)
        .where(FileRow.sha256 == sha256)
        .where(FileRow.state.in_([state.value for state in ACTIVE_STATES]))
        .order_by(FileRow.id)
        .limit(1)
    )
    return session.scalars(query).first()


def new_row(
    now: datetime,
    *,
    state: FileState,
    name: str,
    path: str,
    sha256: str | None,
    size: int,
    format: str | None,
    n_examples: int,
    n_invalid: int,
    invalid_lines: Iterable[LineProblem],
    priority: int,
) -> FileRow:
    """A new drop's row, not yet claimed (the fields every recording sets alike)."""
    return FileRow(
        name=name,
        path=path,
        sha256=sha256,
        size=size,
        format=format,
        n_examples=n_examples,
        n_invalid=n_invalid,
        invalid_lines=_problems(invalid_lines),
        state=state.value,
        priority=priority,
        attempts=0,
        created_at=now,
        updated_at=now,
    )


def _row_of(now: datetime, drop: NewDrop) -> FileRow:
    rejected = drop.reason is not None
    row = new_row(
        now,
        state=FileState.REJECTED if rejected else FileState.QUEUED,
        name=drop.name,
        path=drop.path,
        sha256=drop.sha256,
        size=drop.size,
        format=drop.format,
        n_examples=drop.n_examples,
        n_invalid=drop.n_invalid,
        invalid_lines=drop.invalid_lines,
        priority=0 if rejected else drop.priority,
    )
    if rejected:
        row.error = drop.reason
        row.finished_at = now
    return row


def _log_recorded(record: FileRecord) -> None:
    if record.state is FileState.DUPLICATE:
        log.info("file #%d (%s) is a duplicate: %s", record.id, record.name, record.error)
    elif record.state is FileState.REJECTED:
        log.debug("file #%d (%s) rejected: %s", record.id, record.name, record.error)
    else:
        log.info("file #%d (%s) queued, %d examples", record.id, record.name, record.n_examples)


def _problems(problems: Iterable[LineProblem]) -> list[dict[str, object]]:
    return [{"line": problem.line, "reason": problem.reason} for problem in problems]
