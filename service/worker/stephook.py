"""What the worker does before every optimizer step: stop, pause, cancel, roll back,
renew its lease, report.

The trainer asks :class:`StepHook` before each step whether to stop; a string answer is
the reason (``stop``, ``pause``, ``cancel``, ``rollback``, ``lease_lost``), which the
worker acts on once the trainer has checkpointed (:meth:`service.worker.process.Worker.after_stop`).
The ledger is read every ``worker.poll_s`` and written every ``worker.heartbeat_s``, not at
every step, so a fast model is not slowed down by its own bookkeeping.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from service.ledger import DesiredState, FileRecord, WorkerState

if TYPE_CHECKING:
    from service.worker.process import Worker


class StepHook:
    """Called by the trainer before every optimizer step of one file."""

    def __init__(self, worker: Worker, record: FileRecord) -> None:
        self.worker = worker
        self.record = record
        self.reason: str | None = None
        self._next_poll = 0.0
        self._next_beat = 0.0
        self._recorded = (record.start_step, record.target_step)

    def __call__(self) -> str | None:
        worker = self.worker
        if worker.stop():
            self.reason = "stop"
            return self.reason
        now = time.monotonic()
        self._record_steps()
        report = worker.trainer.last_report
        if report is not None:
            worker.step_times.observe(report.step, report.seconds)
        if now >= self._next_poll:
            self._next_poll = now + worker.settings.worker.poll_s
            control = worker.ledger.get_control()
            if control.desired_state is DesiredState.PAUSED:
                self.reason = "pause"
                return self.reason
            if worker.requests.cancel_requested(self.record):
                self.reason = "cancel"
                return self.reason
            if worker.requests.rollback_wanted(control):
                self.reason = "rollback"
                return self.reason
            worker.requests.serve_at_boundary(control)
        if now >= self._next_beat:
            self._next_beat = now + worker.settings.worker.heartbeat_s
            lease_s = worker.settings.ledger.lease_s
            if not worker.ledger.renew_lease(self.record.id, worker_id=worker.id, lease_s=lease_s):
                self.reason = "lease_lost"
                return self.reason
            worker.space.recovered()  # the ledger took a write: whatever was full is not now
            worker.beat(WorkerState.TRAINING, file=self.record)
        return None

    def _record_steps(self) -> None:
        """Keep the ledger's start and target steps those of the lineage (fixed when the
        file starts, rule 1; a parked file that continues gets its new target)."""
        current = self.worker.trainer.state.current_file
        if current is None:
            return
        steps = (current.start_step, current.target_step)
        if steps != self._recorded:
            self.worker.ledger.set_steps(
                self.record.id, start_step=current.start_step, target_step=current.target_step
            )
            self._recorded = steps
