"""Ledger queries of the worker: claiming files under a lease, recording their steps,
finishing them, and returning the files of a dead worker to the queue.

A worker owns a file while it trains it: the row is ``training`` with ``lease_owner`` set
and ``lease_expires_at`` in the future. The worker renews the lease as it goes; if it
dies, its supervisor calls ``record_crash`` at once, and ``reap_expired`` puts the files
of a worker that died unseen back in the queue once their lease lapses. The lease of the
live worker is never reaped (a long step, evaluation or checkpoint is not a death).

Only a crash is an attempt (ARCHITECTURE.md rule 13): claiming never counts, ``record_crash``
does, and ``retry`` starts the count afresh. Part of ``Ledger``; see
``service.ledger.ledger``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from service.ledger.errors import LedgerError
from service.ledger.models import FileRow
from service.ledger.records import FileRecord, FileState
from service.ledger.store import Store, utcnow

log = logging.getLogger(__name__)

_QUEUED = FileState.QUEUED.value
_TRAINING = FileState.TRAINING.value
_DONE = FileState.DONE.value


class ClaimQueries(Store):
    """Claims, leases, steps and the end of a file's training."""

    def claim_next(self, *, worker_id: str, lease_s: float) -> FileRecord | None:
        """Claim the next queued file (highest priority, then oldest) for ``worker_id``,
        or None if the queue is empty. Two workers never get the same file."""
        query = (
            select(FileRow)
            .where(FileRow.state == _QUEUED)
            .order_by(FileRow.priority.desc(), FileRow.id)
            .limit(1)
            # PostgreSQL: a row another claimer holds is skipped, not waited for. SQLite
            # ignores this; its BEGIN IMMEDIATE lets one claimer in at a time.
            .with_for_update(skip_locked=True)
        )
        with self._writing() as session:
            row = session.scalars(query).first()
            if row is None:
                return None
            _take(row, worker_id=worker_id, lease_s=lease_s)
            record = row.record()
        log.info(
            "file #%d (%s) claimed by %s (%d crash%s so far)",
            record.id,
            record.name,
            worker_id,
            record.attempts,
            "" if record.attempts == 1 else "es",
        )
        return record

    def claim(self, file_id: int, *, worker_id: str, lease_s: float) -> FileRecord | None:
        """Claim this file if it is queued, training under an expired lease, or already
        ours (then the lease is renewed); otherwise (or if there is no such file) None."""
        with self._writing() as session:
            row = session.get(FileRow, file_id, with_for_update=True)
            if row is None:
                return None
            now = utcnow()
            if row.state == _TRAINING and row.lease_owner == worker_id:
                row.lease_expires_at = now + timedelta(seconds=lease_s)
                row.updated_at = now
                return row.record()
            expired = row.lease_expires_at is None or row.lease_expires_at < now
            if row.state == _TRAINING and expired:
                log.warning(
                    "file #%d (%s): the lease of %s has expired; %s takes it over",
                    file_id,
                    row.name,
                    row.lease_owner,
                    worker_id,
                )
            elif row.state != _QUEUED:
                return None
            _take(row, worker_id=worker_id, lease_s=lease_s)
            record = row.record()
        log.info("file #%d (%s) claimed by %s", file_id, record.name, worker_id)
        return record

    def renew_lease(self, file_id: int, *, worker_id: str, lease_s: float) -> bool:
        """Extend ``worker_id``'s lease; False if the file is no longer training under it
        (reaped, taken over, cancelled): the worker must then stop training it."""
        now = utcnow()
        statement = (
            update(FileRow)
            .where(FileRow.id == file_id)
            .where(FileRow.state == _TRAINING)
            .where(FileRow.lease_owner == worker_id)
            .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        with self._writing() as session:
            renewed = session.execute(statement).rowcount == 1  # type: ignore[attr-defined]
        if not renewed:
            log.warning("file #%d: %s no longer holds its lease", file_id, worker_id)
        return renewed

    def set_steps(self, file_id: int, *, start_step: int, target_step: int) -> None:
        """Record the file's step budget when its training starts (rule 1: fixed then)."""
        if target_step < start_step:
            raise ValueError(f"target_step {target_step} is before start_step {start_step}")
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            row.start_step = start_step
            row.target_step = target_step
            row.updated_at = utcnow()

    def complete(
        self, file_id: int, *, start_step: int, end_step: int, lineage_id: str | None = None
    ) -> None:
        """The file is trained (its end is in a committed checkpoint of ``lineage_id``):
        mark it done. Calling it again for a done file changes nothing."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if row.state == _DONE:
                return
            if row.state not in (_QUEUED, _TRAINING):
                raise LedgerError(f"file #{file_id} is {row.state}; it cannot become done")
            _finish(row, start_step=start_step, end_step=end_step, lineage_id=lineage_id)
            name = row.name
        log.info("file #%d (%s) done, steps %d..%d", file_id, name, start_step, end_step)

    def fail(self, file_id: int, *, error: str) -> None:
        """The file cannot be trained: mark it failed with the reason (retry re-queues it)."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if row.state not in (_QUEUED, _TRAINING, FileState.FAILED.value):
                raise LedgerError(f"file #{file_id} is {row.state}; it cannot fail now")
            _end(row, FileState.FAILED, error=error)
            name = row.name
        log.warning("file #%d (%s) failed: %s", file_id, name, error)

    def reject(self, file_id: int, *, error: str) -> FileRecord:
        """The worker found a claimed file untrainable for this model (e.g. everything
        it would train on is cut off by the context length): rejected, like at intake."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if row.state not in (_QUEUED, _TRAINING):
                raise LedgerError(f"file #{file_id} is {row.state}; it cannot be rejected now")
            _end(row, FileState.REJECTED, error=error)
            return row.record()

    def release(self, file_id: int, *, worker_id: str) -> None:
        """Give the file back to the queue (worker stopping or pausing mid-file); its steps
        are kept, so it resumes on the same budget. No-op if the lease is not ours."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if row.state != _TRAINING or row.lease_owner != worker_id:
                log.info("file #%d: %s holds no lease on it to release", file_id, worker_id)
                return
            row.state = _QUEUED
            row.lease_owner = None
            row.lease_expires_at = None
            row.updated_at = utcnow()
            name = row.name
        log.info("file #%d (%s) released by %s", file_id, name, worker_id)

    def reap_expired(self, *, now: datetime | None = None, alive: str | None = None) -> list[int]:
        """Return training files whose lease lapsed before ``now`` to the queue; their ids.

        ``alive`` is a worker known to be running (its supervisor sees the process): its
        leases are left alone, however late, since a slow step is not a dead worker.
        """
        now = now or utcnow()
        query = (
            select(FileRow)
            .where(FileRow.state == _TRAINING)
            .where(or_(FileRow.lease_expires_at.is_(None), FileRow.lease_expires_at < now))
            .order_by(FileRow.id)
            # A row being renewed right now is skipped: its lease is about to be fresh.
            .with_for_update(skip_locked=True)
        )
        if alive is not None:
            query = query.where(or_(FileRow.lease_owner.is_(None), FileRow.lease_owner != alive))
        reaped = []
        with self._writing() as session:
            for row in session.scalars(query):
                log.warning(
                    "file #%d (%s): the lease of %s expired at %s; back in the queue",
                    row.id,
                    row.name,
                    row.lease_owner,
                    row.lease_expires_at.isoformat() if row.lease_expires_at else "(none)",
                )
                row.state = _QUEUED
                row.lease_owner = None
                row.lease_expires_at = None
                row.updated_at = utcnow()
                reaped.append(row.id)
        return reaped

    def record_crash(self, *, worker_id: str, reason: str, max_attempts: int) -> list[FileRecord]:
        """The worker ``worker_id`` died abnormally (its supervisor saw it): each file it
        was training gets one more attempt and goes back to the queue, or fails once it
        has crashed the worker ``max_attempts`` times. The files, as they are now."""
        query = (
            select(FileRow)
            .where(FileRow.state == _TRAINING)
            .where(FileRow.lease_owner == worker_id)
            .order_by(FileRow.id)
            .with_for_update()
        )
        changed = []
        with self._writing() as session:
            for row in session.scalars(query):
                now = utcnow()
                row.attempts += 1
                row.lease_owner = None
                row.lease_expires_at = None
                row.updated_at = now
                if row.attempts >= max_attempts:
                    _end(
                        row,
                        FileState.FAILED,
                        error=(
                            f"training {row.name} crashed the worker {row.attempts} times "
                            f"(worker.max_attempts = {max_attempts}); last: {reason}. Fix "
                            "the cause, then retry it: it continues where the lineage left it"
                        ),
                    )
                else:
                    row.state = _QUEUED
                    row.error = (
                        f"crash {row.attempts} of at most {max_attempts}: {reason}; queued again"
                    )
                changed.append(row.record())
        for record in changed:
            log.warning("file #%d (%s): %s", record.id, record.name, record.error)
        return changed

    def mark_done_from_checkpoint(
        self, sha256: str, *, start_step: int, end_step: int, lineage_id: str | None = None
    ) -> list[int]:
        """The checkpoint says this content is trained: every queued or training record of
        it becomes done with these steps (the checkpoint is the truth). Their ids."""
        query = (
            select(FileRow)
            .where(FileRow.sha256 == sha256)
            .where(FileRow.state.in_([_QUEUED, _TRAINING]))
            .order_by(FileRow.id)
            .with_for_update()
        )
        marked = []
        with self._writing() as session:
            for row in session.scalars(query):
                _finish(row, start_step=start_step, end_step=end_step, lineage_id=lineage_id)
                marked.append(row.id)
        for file_id in marked:
            log.info(
                "file #%d: the checkpoint already holds its training (steps %d..%d); done",
                file_id,
                start_step,
                end_step,
            )
        return marked


def _take(row: FileRow, *, worker_id: str, lease_s: float) -> None:
    """Make ``worker_id`` the owner of the row under a fresh lease (not an attempt: only a
    crash is one)."""
    now = utcnow()
    row.state = _TRAINING
    row.lease_owner = worker_id
    row.lease_expires_at = now + timedelta(seconds=lease_s)
    row.started_at = row.started_at or now
    row.updated_at = now


def _end(row: FileRow, state: FileState, *, error: str) -> None:
    """The file will not be trained (failed, rejected): no claim left on it, and why."""
    now = utcnow()
    row.state = state.value
    row.error = error
    row.lease_owner = None
    row.lease_expires_at = None
    row.finished_at = now
    row.updated_at = now


def _finish(row: FileRow, *, start_step: int, end_step: int, lineage_id: str | None) -> None:
    now = utcnow()
    row.lineage_id = lineage_id or row.lineage_id
    row.state = _DONE
    row.start_step = start_step
    row.end_step = end_step
    row.error = None
    row.lease_owner = None
    row.lease_expires_at = None
    row.finished_at = now
    row.updated_at = now
