"""Bringing the ledger in line with the lineage: the checkpoint is the truth.

The ledger says what was dropped and what the operator asked; the newest checkpoint
says what the model was trained on. When they disagree (a crash between two writes, a
lost checkpoint, a restored backup, a rollback), the checkpoint wins, in both directions:

* a file the lineage finished is marked done;
* a file the ledger calls done but the lineage does not hold (its checkpoints were
  lost) is queued again, with a ``file_reopened`` event that says why; files of an
  earlier lineage, and files a rollback to gold undid on purpose, are left done;
* the file the lineage is in the middle of is resumed under its ledger record; if that
  record is done it is reopened; if it was failed or cancelled, or has no record, its
  progress is parked, so that a retry (or a new drop of it) continues it;
* a file a rollback to gold interrupted is cancelled, even if a crash cut the
  rollback short.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.ledger import FileRecord, FileState

if TYPE_CHECKING:
    from service.worker.process import Worker

log = logging.getLogger(__name__)

_LIVE = (FileState.QUEUED, FileState.TRAINING)
_COPIES = (FileState.DUPLICATE, FileState.REJECTED)


def reconcile(worker: Worker) -> FileRecord | None:
    """Bring the ledger in line with the checkpoint; the file to resume first, if any."""
    ledger, state = worker.ledger, worker.trainer.state
    worker.sync_checkpoints()
    # The lineage lock makes this the only worker: claims of earlier ones are void.
    for record in ledger.list_files(states=[FileState.TRAINING], limit=10_000)[0]:
        ledger.release(record.id, worker_id=record.lease_owner)
    cancel_rolled_back(worker)
    for record in ledger.queue_order():
        done = state.completed(record.sha256)
        if done is not None:
            log.info(
                "file #%d %s was already trained (steps %d-%d)",
                record.id,
                record.name,
                done.start_step,
                done.end_step,
            )
            ledger.mark_done_from_checkpoint(
                record.sha256,
                start_step=done.start_step,
                end_step=done.end_step,
                lineage_id=state.lineage_id,
            )
    reopen_lost(worker)
    return resume_target(worker)


def reopen_lost(worker: Worker) -> None:
    """Queue again the done files of this lineage that its checkpoints no longer hold."""
    ledger, state = worker.ledger, worker.trainer.state
    done = ledger.list_files(states=[FileState.DONE], limit=1_000_000)[0]
    for record in done:
        if record.lineage_id != state.lineage_id or record.sha256 is None:
            continue
        if state.holds(record.sha256):
            continue
        reopen(
            worker,
            record,
            reason=(
                f"the ledger had it done at step {record.end_step}, but the lineage's newest "
                f"usable checkpoint (step {state.global_step}) does not hold its training "
                "(checkpoints lost or restored from an older backup): it is trained again"
            ),
        )


def resume_target(worker: Worker) -> FileRecord | None:
    """The record to resume the file the lineage is in the middle of; None when there is
    none, or when that file is not to be trained now (then it is parked)."""
    trainer, ledger = worker.trainer, worker.ledger
    current = trainer.state.current_file
    if current is None:
        return None
    records = [r for r in ledger.find_by_sha(current.sha256) if r.state not in _COPIES]
    for record in records:
        if record.state in _LIVE:
            if record.cancel_requested_at is not None:
                # Cancelled while training, and a crash came before the worker acted.
                worker.requests.finish_cancel(record)
                return None
            return record
    for record in records:
        if record.state is FileState.DONE:
            return reopen(
                worker,
                record,
                reason=(
                    f"the checkpoint that held its end (step {record.end_step}) is gone; the "
                    f"lineage resumes at step {trainer.state.global_step}, in its middle: the "
                    "rest of it is trained"
                ),
            )
    if records:
        record = records[-1]
        reason = f"file #{record.id} is {record.state}" + (
            f" ({record.error})" if record.error else ""
        )
    else:
        reason = "the ledger has no record of it (dropping the same content again continues it)"
    trainer.park_current(reason=reason)
    return None


def cancel_rolled_back(worker: Worker) -> None:
    """Cancel the file a rollback to gold interrupted, when the rollback was finished as
    the lineage opened (after a crash cut it short, the worker never got to it)."""
    rollback = worker.trainer.rollback
    if rollback is None or not rollback.in_progress:
        return
    sha256 = rollback.in_progress.get("sha256")
    for record in worker.ledger.find_by_sha(sha256):
        if record.state in _LIVE:
            worker.requests.cancel_for_rollback(record, step=rollback.from_step)


def reopen(worker: Worker, record: FileRecord, *, reason: str) -> FileRecord:
    """Queue a done file again because the lineage does not hold it (with an event)."""
    reopened = worker.ledger.reopen(record.id, reason=reason)
    worker.trainer.events.emit(
        "file_reopened",
        id=record.id,
        file=record.name,
        sha256=record.sha256,
        end_step=record.end_step,
        step=worker.trainer.state.global_step,
        reason=reason,
    )
    return reopened


def resettle(worker: Worker) -> FileRecord | None:
    """After waiting out a full disk: finish what the failed write interrupted (a file's
    completion, its event), then resume the lineage's file if it has one."""
    trainer, ledger = worker.trainer, worker.ledger
    trainer._reconcile_file_complete()
    for record in ledger.list_files(states=[FileState.TRAINING], limit=10_000)[0]:
        if record.lease_owner != worker.id:
            continue
        done = trainer.state.completed(record.sha256)
        if done is not None:
            worker.complete(record, done)
    return resume_target(worker)
