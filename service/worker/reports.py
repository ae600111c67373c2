"""The worker's reports to the ledger: heartbeats, and the checkpoints it saved.

A heartbeat says what the worker is doing, on which file, how fast; the API and the
supervisor only read them. The worker writes one about every ``worker.heartbeat_s`` and
whenever its state changes. The counters ``/metrics`` exposes live in the worker, so they
travel in the heartbeat too.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from service.diskspace import SpaceWait
from service.ledger import FileRecord, Ledger, WorkerState
from service.worker.steptimes import StepTimes
from trainer.loop import Trainer
from trainer.records.storage import DiskFullError

log = logging.getLogger(__name__)


class Reports:
    """Writes one worker's reports."""

    def __init__(self, ledger: Ledger, *, worker_id: str, space: SpaceWait) -> None:
        self.ledger = ledger
        self.worker_id = worker_id
        self.space = space
        """Its problem, while a disk is full, is what every heartbeat reports."""
        self.started_at = datetime.now(UTC)
        self.step_times = StepTimes()
        self.settings_revision: int | None = None
        """The revision of the settings in force the worker runs with (``traind serve``)."""

    def checkpoint_saved(self, path: Path, step: int, removed: list[Path]) -> None:
        """Keep the ledger's list of checkpoints in step with the folder."""
        self.space.recovered()
        self.ledger.record_checkpoint(name=path.name, kind="step", step=step, path=str(path))
        self.ledger.forget_checkpoints(p.name for p in removed)

    def gold_saved(self, path: Path, step: int) -> None:
        self.ledger.record_checkpoint(name=path.name, kind="gold", step=step, path=str(path))

    def beat(
        self,
        state: WorkerState,
        *,
        trainer: Trainer | None,
        file: FileRecord | None = None,
        message: str | None = None,
    ) -> bool:
        """Report to the ledger; a full disk under the ledger only loses the report (then
        False)."""
        report = trainer.last_report if trainer else None
        current = trainer.state.current_file if trainer else None
        if self.space.problem and state is not WorkerState.ERROR:
            state, message = WorkerState.ERROR, self.space.problem
        try:
            self.ledger.heartbeat(
                worker_id=self.worker_id,
                pid=os.getpid(),
                state=state,
                model_loaded=trainer is not None,
                started_at=self.started_at,
                global_step=trainer.state.global_step if trainer else None,
                file_id=file.id if file else None,
                start_step=current.start_step if current else None,
                target_step=current.target_step if current else None,
                loss=report.loss if report else None,
                lr=report.lr if report else None,
                tokens_per_s=report.tokens_per_s if report and file else None,
                eta_s=report.eta_s if report and file else None,
                message=message,
                extra=self.extra(trainer) if trainer else None,
            )
        except DiskFullError as exc:
            # Said once per outage: the wait itself logs what is full.
            level = logging.DEBUG if self.space.problem else logging.WARNING
            log.log(level, "could not write the heartbeat: %s", exc)
            return False
        return True

    def extra(self, trainer: Trainer) -> dict:
        """Counters for /metrics, memory for /metrics and /v1/status, and the settings
        revision applied (``/v1/settings``)."""
        state = trainer.state
        revision = (
            {} if self.settings_revision is None else {"settings_revision": self.settings_revision}
        )
        return {
            **revision,
            "tokens_processed": state.tokens_processed,
            "nan_skips_total": state.nan_skips_total,
            "rollbacks": state.rollbacks,  # rewinds after non-finite steps (the public name)
            "oom_recoveries": state.oom_recoveries,
            **self.step_times.export(),
            "memory": trainer.memory.measure().to_dict(),
        }
