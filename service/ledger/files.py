"""Ledger queries about drops: recording them, finding them, listing the queue, and the
operator's cancel and retry (the files a rollback to gold undid: ``rollbacks``).

Part of ``Ledger``; see ``service.ledger.ledger``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

from sqlalchemy import case, func, select

from service.ledger.drops import DropQueries, NewDrop, active_twin
from service.ledger.errors import LedgerError
from service.ledger.models import FileRow
from service.ledger.records import FileRecord, FileState, LineProblem
from service.ledger.store import utcnow

log = logging.getLogger(__name__)


class FileQueries(DropQueries):
    """Recording, finding and listing drops; cancel and retry."""

    def record_file(
        self,
        *,
        name: str,
        path: str,
        sha256: str,
        size: int,
        format: str | None,
        n_examples: int,
        n_invalid: int = 0,
        invalid_lines: Iterable[LineProblem] = (),
        priority: int = 0,
    ) -> FileRecord:
        """Record a valid drop: ``queued``, or ``duplicate`` if its content is already
        queued, training or done (decided atomically with the insert; the content of a
        failed, cancelled or rolled-back file is not trained, so it queues again)."""
        drop = NewDrop(
            name=name,
            path=path,
            sha256=sha256,
            size=size,
            format=format,
            n_examples=n_examples,
            n_invalid=n_invalid,
            invalid_lines=tuple(invalid_lines),
            priority=priority,
        )
        (record,) = self.record_drops([drop])
        return record

    def record_rejected(
        self,
        *,
        name: str,
        path: str,
        reason: str,
        sha256: str | None = None,
        size: int = 0,
        format: str | None = None,
        n_examples: int = 0,
        n_invalid: int = 0,
        invalid_lines: Iterable[LineProblem] = (),
    ) -> FileRecord:
        """Record a drop that will not train, with the reason a person can act on."""
        drop = NewDrop(
            name=name,
            path=path,
            sha256=sha256,
            size=size,
            format=format,
            n_examples=n_examples,
            n_invalid=n_invalid,
            invalid_lines=tuple(invalid_lines),
            reason=reason,
        )
        (record,) = self.record_drops([drop])
        return record

    def set_path(self, file_id: int, path: str) -> None:
        """Note where the file is now (the watcher moves drops out of the inbox)."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            row.path = path
            row.updated_at = utcnow()

    def get_file(self, file_id: int) -> FileRecord | None:
        """The file with that id, or None."""
        with self._reading() as session:
            row = session.get(FileRow, file_id)
            return row.record() if row else None

    def find_by_path(self, path: str) -> FileRecord | None:
        """The newest record of the file at ``path``, or None."""
        query = select(FileRow).where(FileRow.path == path).order_by(FileRow.id.desc()).limit(1)
        with self._reading() as session:
            row = session.scalars(query).first()
            return row.record() if row else None

    def find_by_sha(self, sha256: str) -> list[FileRecord]:
        """Every record with that content, oldest first."""
        query = select(FileRow).where(FileRow.sha256 == sha256).order_by(FileRow.id)
        with self._reading() as session:
            return [row.record() for row in session.scalars(query)]

    def list_files(
        self,
        *,
        states: Collection[FileState] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[FileRecord], int]:
        """A page of files by id (optionally only some states), and how many match in all."""
        query = select(FileRow)
        counting = select(func.count()).select_from(FileRow)
        if states is not None:
            wanted = [FileState(state).value for state in states]
            query = query.where(FileRow.state.in_(wanted))
            counting = counting.where(FileRow.state.in_(wanted))
        query = query.order_by(FileRow.id).limit(limit).offset(offset)
        with self._reading() as session:
            total = session.scalar(counting) or 0
            return [row.record() for row in session.scalars(query)], total

    def counts_by_state(self) -> dict[FileState, int]:
        """How many files are in each state (every state present, 0 if none)."""
        counts = dict.fromkeys(FileState, 0)
        query = select(FileRow.state, func.count()).group_by(FileRow.state)
        with self._reading() as session:
            for state, count in session.execute(query):
                counts[FileState(state)] = count
        return counts

    def queue_order(self) -> list[FileRecord]:
        """Queued and training files in the order they will train: training first, then
        by priority (highest first), then by arrival."""
        training_first = case((FileRow.state == FileState.TRAINING.value, 0), else_=1)
        query = (
            select(FileRow)
            .where(FileRow.state.in_([FileState.QUEUED.value, FileState.TRAINING.value]))
            .order_by(training_first, FileRow.priority.desc(), FileRow.id)
        )
        with self._reading() as session:
            return [row.record() for row in session.scalars(query)]

    def cancel(self, file_id: int) -> FileRecord:
        """Cancel a queued file; LedgerError saying why if it is not queued."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            state = FileState(row.state)
            if state is FileState.TRAINING:
                raise LedgerError(f"file #{file_id} is training; cancel it through the worker")
            if state is FileState.CANCELLED:
                raise LedgerError(f"file #{file_id} is already cancelled")
            if state is not FileState.QUEUED:
                raise LedgerError(f"file #{file_id} is {state}; only queued files can be cancelled")
            now = utcnow()
            row.state = FileState.CANCELLED.value
            row.error = "cancelled on request"
            row.finished_at = now
            row.updated_at = now
            record = row.record()
        log.info("file #%d (%s) cancelled", file_id, record.name)
        return record

    def request_cancel(self, file_id: int) -> FileRecord:
        """Cancel a queued file now, or ask the worker to stop the file it is training.

        A training file stays ``training`` with ``cancel_requested_at`` set until the
        worker reaches an optimizer-step boundary (see :meth:`finish_cancel`).
        """
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if FileState(row.state) is FileState.TRAINING:
                if row.cancel_requested_at is None:
                    row.cancel_requested_at = utcnow()
                    row.updated_at = row.cancel_requested_at
                    log.info("file #%d (%s): cancel requested", file_id, row.name)
                return row.record()
        return self.cancel(file_id)

    def finish_cancel(self, file_id: int, *, step: int, error: str | None = None) -> FileRecord:
        """The worker stopped a file it was training on request, at global ``step``."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            now = utcnow()
            trained = (
                f"steps {row.start_step}-{step} were trained and are kept"
                if row.start_step is not None
                else "nothing of it was trained"
            )
            row.state = FileState.CANCELLED.value
            row.error = error or f"cancelled on request during training at step {step}; {trained}"
            row.end_step = step
            row.lease_owner = None
            row.lease_expires_at = None
            row.finished_at = now
            row.updated_at = now
            record = row.record()
        log.info("file #%d (%s) cancelled at step %d", file_id, record.name, step)
        return record

    def retry(self, file_id: int) -> FileRecord:
        """Queue a failed, cancelled or rolled-back file again; LedgerError saying why if it
        cannot be.

        A failed or cancelled file keeps its recorded steps: if a checkpoint holds part of
        it, the worker resumes there; otherwise it records fresh ones with ``set_steps``
        when it starts the file. A rolled-back file's steps are those the lineage no longer
        holds: they are cleared.
        """
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            _check_retryable(row)
            self._lock_content(session, row.sha256)
            twin = active_twin(session, row.sha256) if row.sha256 else None
            if twin is not None:
                raise LedgerError(
                    f"file #{file_id} has the same content as file #{twin.id} ({twin.name}), "
                    f"which is {twin.state}; there is nothing to retry"
                )
            back_to_queue(row, forget_steps=FileState(row.state) is FileState.ROLLED_BACK)
            record = row.record()
        log.info("file #%d (%s) queued again on request", file_id, record.name)
        return record

    def reopen(self, file_id: int, *, reason: str) -> FileRecord:
        """A done file the lineage does not hold after all (its checkpoints were lost):
        queue it again, first in line, with ``reason`` (the checkpoint is the truth)."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if FileState(row.state) is not FileState.DONE:
                raise LedgerError(f"file #{file_id} is {row.state}, not done; nothing to reopen")
            row.state = FileState.QUEUED.value
            row.error = reason
            row.end_step = None
            row.lineage_id = None
            row.finished_at = None
            row.updated_at = utcnow()
            record = row.record()
        log.warning("file #%d (%s) reopened: %s", file_id, record.name, reason)
        return record


def back_to_queue(row: FileRow, *, forget_steps: bool) -> None:
    """The operator queues the file again (retry, requeue): afresh, without a claim."""
    row.state = FileState.QUEUED.value
    row.error = None
    row.end_step = None
    if forget_steps:
        row.start_step = None
        row.target_step = None
        row.lineage_id = None
    # The operator fixed the cause: the crashes before do not count any more.
    row.attempts = 0
    row.lease_owner = None
    row.lease_expires_at = None
    row.finished_at = None
    row.updated_at = utcnow()


def _check_retryable(row: FileRow) -> None:
    state = FileState(row.state)
    if state in (FileState.FAILED, FileState.CANCELLED, FileState.ROLLED_BACK):
        return
    if state is FileState.REJECTED:
        raise LedgerError(
            f"file #{row.id} was rejected ({row.error}); fix the file and drop it again"
        )
    if state is FileState.DUPLICATE:
        raise LedgerError(
            f"file #{row.id} is a duplicate of file #{row.duplicate_of}; there is nothing to retry"
        )
    if state is FileState.DONE:
        raise LedgerError(f"file #{row.id} is already done; there is nothing to retry")
    raise LedgerError(f"file #{row.id} is already {state}")
