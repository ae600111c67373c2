"""Ledger queries about the files a rollback to gold undid: marking them ``rolled_back``
and queueing them again.

A rollback to gold takes the weights back to before the files that finished after gold's
step. The worker marks each such ``done`` file ``rolled_back`` (keeping the steps it had,
so the queue shows what was undone, not what is trained); the operator queues them again
with one request (``traind requeue --rolled-back``) or one by one (``retry``).

Part of ``Ledger``; see ``service.ledger.ledger``.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from service.ledger.drops import active_twin
from service.ledger.files import back_to_queue
from service.ledger.models import FileRow
from service.ledger.records import FileRecord, FileState
from service.ledger.store import Store, utcnow

log = logging.getLogger(__name__)


class RollbackQueries(Store):
    """Marking the files a rollback to gold undid, and queueing them again."""

    def mark_rolled_back(self, file_id: int, *, gold_step: int) -> FileRecord | None:
        """A done file that the rollback to gold at ``gold_step`` undid becomes
        ``rolled_back``, with the steps it had and how to train it again. None when it is
        not done (marked already, or changed meanwhile): nothing to do."""
        with self._writing() as session:
            row = self._locked_file(session, file_id)
            if FileState(row.state) is not FileState.DONE:
                return None
            row.state = FileState.ROLLED_BACK.value
            row.error = (
                f"rolled back to gold at step {gold_step}; it had been trained on steps "
                f"{row.start_step}-{row.end_step}: `traind requeue --rolled-back` trains it again"
            )
            row.updated_at = utcnow()
            record = row.record()
        log.warning("file #%d (%s): %s", file_id, record.name, record.error)
        return record

    def requeue_rolled_back(self) -> list[FileRecord]:
        """Queue every rolled-back file again, afresh (no steps, no attempts), by id. One
        whose content is queued, training or done under another record (dropped again)
        stays as it is: that record trains it."""
        query = (
            select(FileRow.id)
            .where(FileRow.state == FileState.ROLLED_BACK.value)
            .order_by(FileRow.id)
        )
        requeued: list[FileRecord] = []
        with self._writing() as session:
            for file_id in session.scalars(query).all():
                row = self._locked_file(session, file_id)
                self._lock_content(session, row.sha256)
                twin = active_twin(session, row.sha256)
                if twin is not None:
                    log.info(
                        "file #%d (%s) stays rolled back: its content is %s as file #%d",
                        row.id,
                        row.name,
                        twin.state,
                        twin.id,
                    )
                    continue
                back_to_queue(row, forget_steps=True)
                session.flush()  # the next one's twin is this one, if they share content
                requeued.append(row.record())
        for record in requeued:
            log.info("file #%d (%s) queued again after a rollback to gold", record.id, record.name)
        return requeued
