"""What the worker does before every optimizer step of a file: ask what the operator
wants, renew its claim, report.

The trainer asks :class:`StepHook` before each step whether to stop. The answer comes
from :func:`service.worker.control.decide`; the hook checkpoints a stop with the
directive as its reason, and keeps the directive (:attr:`StepHook.directive`), which the
worker acts on once the trainer has returned
(:meth:`service.worker.process.Worker.after_stop`). The stop flag is looked at before
every step; the ledger is read every ``worker.poll_s`` and written every
``worker.heartbeat_s``, not at every step, so a fast model is not slowed down by its own
bookkeeping.
"""

from __future__ import annotations

import dataclasses
import time

from service.config.settings import Settings
from service.ledger import FileRecord, Ledger, WorkerState
from service.worker.control import Directive, Situation, Steering, decide
from service.worker.reports import Reports
from trainer.loop import Trainer


class StepHook:
    """Called by the trainer before every optimizer step of one file."""

    def __init__(
        self,
        record: FileRecord,
        *,
        trainer: Trainer,
        ledger: Ledger,
        steering: Steering,
        reports: Reports,
        settings: Settings,
    ) -> None:
        self.record = record
        self.trainer = trainer
        """The lineage training the file (the worker sets it again for every round)."""
        self.directive = Directive.GO_ON
        """The answer to the trainer's last question: why it stopped, once it has."""
        self._ledger = ledger
        self._steering = steering
        self._reports = reports
        self._settings = settings
        self._next_poll = 0.0
        self._next_beat = 0.0
        self._recorded = (record.start_step, record.target_step)

    def __call__(self) -> bool:
        """True to stop before this step; :attr:`directive` says why. A stop the operator
        asked for is checkpointed here, with the directive as the reason the checkpoint
        records (the trainer's own checkpoint of a stop says ``stop``)."""
        unsaved = self.trainer.unsaved_steps
        self.directive = self._directive()
        if self.directive is Directive.GO_ON:
            return False
        served_a_save = unsaved and not self.trainer.unsaved_steps  # at this very boundary
        if self.directive is not Directive.STOP and not served_a_save:
            self.trainer.save_checkpoint(reason=self.directive.value)
        return True

    def _directive(self) -> Directive:
        directive = decide(self._steering.glance())
        if directive is not Directive.GO_ON:
            return directive
        now = time.monotonic()
        self._record_steps()
        report = self.trainer.last_report
        if report is not None:
            self._reports.step_times.observe(report.step, report.seconds)
        situation = Situation()
        if now >= self._next_poll:
            self._next_poll = now + self._settings.worker.poll_s
            directive, situation = self._steering.steer(self.trainer, file=self.record)
            if directive is not Directive.GO_ON:
                return directive
        if now >= self._next_beat:
            self._next_beat = now + self._settings.worker.heartbeat_s
            renewed = self._ledger.renew_lease(
                self.record.id,
                worker_id=self._reports.worker_id,
                lease_s=self._settings.ledger.lease_s,
            )
            if not renewed:
                return decide(dataclasses.replace(situation, lease_lost=True))
            self._reports.space.recovered()  # the ledger took a write: nothing is full now
            self._reports.beat(WorkerState.TRAINING, trainer=self.trainer, file=self.record)
        return Directive.GO_ON

    def _record_steps(self) -> None:
        """Keep the ledger's start and target steps those of the lineage (fixed when the
        file starts, ARCHITECTURE.md rule 1; a parked file that continues gets its new
        target)."""
        current = self.trainer.state.current_file
        if current is None:
            return
        steps = (current.start_step, current.target_step)
        if steps != self._recorded:
            self._ledger.set_steps(
                self.record.id, start_step=current.start_step, target_step=current.target_step
            )
            self._recorded = steps
