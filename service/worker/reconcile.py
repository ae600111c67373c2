"""Bringing the ledger in line with the lineage: the checkpoint is the truth.

The ledger says what was dropped and what the operator asked; the newest checkpoint
says what the model was trained on. When they disagree (a crash between two writes, a
lost checkpoint, a restored backup, a rollback), the checkpoint wins, in both directions:

* a file the lineage finished is marked done;
* a file the ledger calls done but the lineage does not hold (its checkpoints were
  lost) is queued again, with a ``file_reopened`` event that says why; files of an
  earlier lineage are left done;
* a file the ledger calls done that a rollback to gold undid on purpose becomes
  ``rolled_back`` (:func:`service.worker.requests.mark_rolled_back`), should a crash
  have come between the rollback and the worker's marking it;
* the file the lineage is in the middle of is resumed under its ledger record; if that
  record is done it is reopened; if it was failed or cancelled, or has no record, its
  progress is parked, so that a retry (or a new drop of it) continues it;
* a file a rollback to gold interrupted is cancelled, even if a crash cut the
  rollback short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from service.ledger import FileRecord, FileState, Ledger
from service.worker.requests import cancel_for_rollback, mark_rolled_back
from trainer.loop import Trainer
from trainer.records.checkpoints import step_folders
from trainer.records.state import CompletedFile

log = logging.getLogger(__name__)

_LIVE = (FileState.QUEUED, FileState.TRAINING)
_COPIES = (FileState.DUPLICATE, FileState.REJECTED)

CancelAction = Callable[[FileRecord], None]
"""What the worker does with a file cancelled while training, once it gets to it."""


def reconcile(
    trainer: Trainer, ledger: Ledger, *, checkpoints: Path, finish_cancel: CancelAction
) -> FileRecord | None:
    """Bring the ledger in line with the checkpoint; the file to resume first, if any."""
    state = trainer.state
    sync_checkpoints(ledger, checkpoints)
    # The lineage lock makes this the only worker: claims of earlier ones are void.
    for record in ledger.list_files(states=[FileState.TRAINING], limit=10_000)[0]:
        ledger.release(record.id, worker_id=record.lease_owner)
    cancel_rolled_back(trainer, ledger)
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
    mark_rolled_back(trainer, ledger)
    reopen_lost(trainer, ledger)
    return resume_target(trainer, ledger, finish_cancel=finish_cancel)


def sync_checkpoints(ledger: Ledger, checkpoints: Path) -> None:
    """Make the ledger's list of step checkpoints match the folder ``checkpoints``."""
    on_disk = step_folders(checkpoints)
    for step, path in on_disk:
        ledger.record_checkpoint(name=path.name, kind="step", step=step, path=str(path))
    names = {path.name for _, path in on_disk}
    ledger.forget_checkpoints(
        c["name"] for c in ledger.list_checkpoints(kind="step") if c["name"] not in names
    )


def complete(trainer: Trainer, ledger: Ledger, record: FileRecord, done: CompletedFile) -> None:
    """The lineage has trained the file (``done``): the ledger says so, and by whom."""
    ledger.complete(
        record.id,
        start_step=done.start_step,
        end_step=done.end_step,
        lineage_id=trainer.state.lineage_id,
    )


def reopen_lost(trainer: Trainer, ledger: Ledger) -> None:
    """Queue again the done files of this lineage that its checkpoints no longer hold (a
    file a rollback to gold undid is held: it is rolled back, not lost)."""
    state = trainer.state
    done = ledger.list_files(states=[FileState.DONE], limit=1_000_000)[0]
    for record in done:
        if record.lineage_id != state.lineage_id or record.sha256 is None:
            continue
        if state.holds(record.sha256):
            continue
        reopen(
            trainer,
            ledger,
            record,
            reason=(
                f"the ledger had it done at step {record.end_step}, but the lineage's newest "
                f"usable checkpoint (step {state.global_step}) does not hold its training "
                "(checkpoints lost or restored from an older backup): it is trained again"
            ),
        )


def resume_target(
    trainer: Trainer, ledger: Ledger, *, finish_cancel: CancelAction
) -> FileRecord | None:
    """The record to resume the file the lineage is in the middle of; None when there is
    none, or when that file is not to be trained now (then it is parked)."""
    current = trainer.state.current_file
    if current is None:
        return None
    records = [r for r in ledger.find_by_sha(current.sha256) if r.state not in _COPIES]
    for record in records:
        if record.state in _LIVE:
            if record.cancel_requested_at is not None:
                # Cancelled while training, and a crash came before the worker acted.
                finish_cancel(record)
                return None
            return record
    for record in records:
        if record.state is FileState.DONE:
            return reopen(
                trainer,
                ledger,
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


def cancel_rolled_back(trainer: Trainer, ledger: Ledger) -> None:
    """Cancel the file a rollback to gold interrupted, when the rollback was finished as
    the lineage opened (after a crash cut it short, the worker never got to it)."""
    rollback = trainer.rollback
    if rollback is None or not rollback.in_progress:
        return
    sha256 = rollback.in_progress.get("sha256")
    for record in ledger.find_by_sha(sha256):
        if record.state in _LIVE:
            cancel_for_rollback(trainer, ledger, record, step=rollback.from_step)


def reopen(trainer: Trainer, ledger: Ledger, record: FileRecord, *, reason: str) -> FileRecord:
    """Queue a done file again because the lineage does not hold it (with an event)."""
    reopened = ledger.reopen(record.id, reason=reason)
    trainer.events.emit(
        "file_reopened",
        id=record.id,
        file=record.name,
        sha256=record.sha256,
        end_step=record.end_step,
        step=trainer.state.global_step,
        reason=reason,
    )
    return reopened


def resettle(
    trainer: Trainer, ledger: Ledger, *, worker_id: str, finish_cancel: CancelAction
) -> FileRecord | None:
    """After waiting out a full disk: finish what the failed write interrupted (a file's
    completion, its event), then resume the lineage's file if it has one."""
    trainer.reconcile_file_complete()
    for record in ledger.list_files(states=[FileState.TRAINING], limit=10_000)[0]:
        if record.lease_owner != worker_id:
            continue
        done = trainer.state.completed(record.sha256)
        if done is not None:
            complete(trainer, ledger, record, done)
    return resume_target(trainer, ledger, finish_cancel=finish_cancel)
