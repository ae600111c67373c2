"""Operator requests the worker serves: save now, export now, roll back to gold.

The API records each request as a time in the ledger's control row; the worker serves a
request whose time it has not served yet, at an optimizer-step boundary. Requests older
than the worker's start count as served: the checkpoint it resumed from already covers a
save, and replaying an old rollback at every restart would undo later training.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from service.ledger import Control, FileRecord, WorkerState
from trainer.checkpoint import CheckpointError
from trainer.gold import GOLD
from trainer.loop import Trainer

if TYPE_CHECKING:
    from service.worker import Worker

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "export", "rollback")


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
        return self._pending(control, "rollback")

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
        self._mark(control, "rollback")
        worker = self.worker
        old = worker.trainer
        settings = worker.settings
        gold = settings.paths.checkpoints / GOLD
        if old.state.gold is None and not gold.is_dir():
            reason = "there is no gold checkpoint yet (no evaluation has promoted one)"
            log.error("rollback to gold refused: %s", reason)
            old.events.emit("rollback_refused", step=old.state.global_step, reason=reason)
            return False
        step = old.state.global_step
        if old.unsaved_steps:
            old.save_checkpoint(reason="before_rollback")
        old.close()
        try:
            new = _open_trainer(settings, from_gold=True)
        except CheckpointError as exc:
            # Gold is unusable: carry on with the lineage as it was.
            log.error("rollback to gold failed: %s", exc)
            old.events.emit("rollback_refused", step=step, reason=str(exc))
            worker.trainer = _open_trainer(settings, from_gold=False)
            worker.attach(worker.trainer)
            return False
        worker.trainer = new
        worker.attach(new)
        if file is not None:
            gold_step = new.state.global_step
            cancelled = worker.ledger.finish_cancel(
                file.id,
                step=step,
                error=(
                    f"the lineage was rolled back to gold (step {gold_step}) at step {step}, "
                    "before this file finished; what it taught was undone. Retry it to train it "
                    "again."
                ),
            )
            new.events.emit(
                "file_cancelled", id=file.id, file=file.name, step=step, reason=cancelled.error
            )
        worker.sync_checkpoints()
        worker.beat(WorkerState.IDLE)
        return True


def _open_trainer(settings, *, from_gold: bool) -> Trainer:
    return Trainer.open(
        spec=settings.lineage_spec(),
        train=settings.train_config(),
        paths=settings.run_paths(),
        evaluation=settings.eval_config(),
        gold=settings.gold_config(),
        export=settings.export_config(),
        from_gold=from_gold,
    )
