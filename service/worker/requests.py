"""Operator requests the worker serves: pause, cancel, save now, export now, roll back.

The API records each request as a time in the ledger's control row; the worker serves a
request at an optimizer-step boundary. Save and export requests older than the worker's
start count as served (the checkpoint it resumed from already covers a save). A rollback
is different: the lineage itself records the newest request it served
(``rollback_served`` in its checkpoint), so a request is carried out exactly once
whatever crashes and restarts come between the request and the rollback, and a request
older than the lineage is never replayed onto it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from service.ledger import Control, DesiredState, FileRecord, WorkerState
from trainer.checkpoint import CheckpointError
from trainer.gold import GOLD

if TYPE_CHECKING:
    from service.worker.process import Worker

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "export")


class OperatorRequests:
    """Which requests a worker has served, and serving them."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        control = worker.ledger.get_control()
        self._served: dict[str, datetime | None] = {
            kind: getattr(control, f"{kind}_requested_at") for kind in KINDS
        }

    def _pending(self, control: Control, kind: str) -> bool:
        requested = getattr(control, f"{kind}_requested_at")
        return requested is not None and requested != self._served[kind]

    def _mark(self, control: Control, kind: str) -> None:
        self._served[kind] = getattr(control, f"{kind}_requested_at")

    def rollback_wanted(self, control: Control) -> bool:
        """A rollback was asked after the newest one this lineage served, and after the
        lineage began."""
        requested = control.rollback_requested_at
        if requested is None:
            return False
        state = self.worker.trainer.state
        served = [state.created_at] + ([state.rollback_served] if state.rollback_served else [])
        return all(requested > _time(t) for t in served)

    def serve_at_boundary(self, control: Control) -> None:
        """Save and export if asked (the trainer is at an optimizer-step boundary)."""
        trainer = self.worker.trainer
        if self._pending(control, "checkpoint"):
            self._mark(control, "checkpoint")
            if trainer.unsaved_steps:
                trainer.save_checkpoint(reason="requested")
        if self._pending(control, "export"):
            self._mark(control, "export")
            trainer.export(reason="requested")

    def roll_back(self, control: Control, *, file: FileRecord | None) -> bool:
        """Roll the lineage back to gold; ``file`` (being trained) is cancelled with a
        reason saying how to train it again. False (and an event) if there is no gold."""
        request = control.rollback_requested_at.isoformat()
        worker = self.worker
        old = worker.trainer
        step = old.state.global_step
        gold = worker.settings.paths.checkpoints / GOLD
        if old.state.gold is None and not gold.is_dir():
            self._refuse(
                request, "there is no gold checkpoint yet (no evaluation has promoted one)"
            )
            return False
        if old.unsaved_steps:
            old.save_checkpoint(reason="before_rollback")
        current = old.state.current_file
        in_progress = {"name": current.name, "sha256": current.sha256} if current else None
        old.close()
        try:
            worker.trainer = worker.open_trainer(
                from_gold=True, rollback_request=request, in_progress=in_progress
            )
        except CheckpointError as exc:
            # Gold is unusable: carry on with the lineage as it was.
            worker.trainer = worker.open_trainer()
            self._refuse(request, f"rollback to gold failed: {exc}", step=step)
            return False
        if file is not None:
            self.cancel_for_rollback(file, step=step)
        worker.sync_checkpoints()
        worker.beat(WorkerState.IDLE)
        return True

    def cancel_requested(self, record: FileRecord) -> bool:
        current = self.worker.ledger.get_file(record.id)
        return current is not None and current.cancel_requested_at is not None

    def finish_cancel(self, record: FileRecord) -> None:
        """Stop a file on request: what it taught so far stays in the weights, and a retry
        continues it."""
        worker = self.worker
        trainer = worker.trainer
        step = trainer.state.global_step
        trainer.park_current(reason=f"cancelled on request at step {step}")
        cancelled = worker.ledger.finish_cancel(record.id, step=step)
        trainer.events.emit(
            "file_cancelled", id=record.id, file=record.name, step=step, reason=cancelled.error
        )
        worker.beat(WorkerState.IDLE)

    def cancel_for_rollback(self, record: FileRecord, *, step: int) -> None:
        """A rollback to gold undid what this file taught: cancelled, with how to retry."""
        worker = self.worker
        gold_step = worker.trainer.state.global_step
        cancelled = worker.ledger.finish_cancel(
            record.id,
            step=step,
            error=(
                f"the lineage was rolled back to gold (step {gold_step}) at step {step}, "
                "before this file finished; what it taught was undone. Retry it to train it "
                "again (it continues from gold's position in it, if gold holds part of it)."
            ),
        )
        worker.trainer.events.emit(
            "file_cancelled", id=record.id, file=record.name, step=step, reason=cancelled.error
        )

    def hold_paused(self, *, file: FileRecord | None) -> str | None:
        """Hold the model (already checkpointed at a step boundary) until resumed or stopped;
        ``"rollback"`` if a rollback to gold was served meanwhile (``file`` is then over)."""
        worker = self.worker
        trainer = worker.trainer
        step = trainer.state.global_step
        if trainer.unsaved_steps:
            trainer.save_checkpoint(reason="pause")
        trainer.events.emit("paused", step=step, file=file.name if file else None)
        log.info("paused at step %d", step)
        lease_s = worker.settings.ledger.lease_s
        while not worker.stop():
            if file is not None:
                worker.ledger.renew_lease(file.id, worker_id=worker.id, lease_s=lease_s)
            worker.beat(WorkerState.PAUSED, file=file)
            control = worker.ledger.get_control()
            if self.rollback_wanted(control):
                if self.roll_back(control, file=file):
                    return "rollback"
                trainer = worker.trainer
            self.serve_at_boundary(control)
            if file is not None and self.cancel_requested(file):
                return None  # a paused worker is at a step boundary: the cancel can act now
            if control.desired_state is DesiredState.RUNNING:
                trainer.events.emit("resumed", step=trainer.state.global_step)
                log.info("resumed at step %d", trainer.state.global_step)
                return None
            time.sleep(worker.settings.worker.poll_s)
        return None

    def _refuse(self, request: str, reason: str, *, step: int | None = None) -> None:
        """Refused for good: the lineage records the request as served (with its next
        checkpoint), so it is not refused again at every restart."""
        trainer = self.worker.trainer
        trainer.state.rollback_served = request
        log.error("rollback to gold refused: %s", reason)
        trainer.events.emit(
            "rollback_refused",
            step=trainer.state.global_step if step is None else step,
            reason=reason,
        )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
