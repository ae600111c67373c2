"""A trainer's bookkeeping: checkpoints, gold, the export, and the training record.

Mixed into :class:`trainer.loop.Trainer`, which owns the model, optimizer, state and event
log these methods write. Every checkpoint, gold and export is written atomically
(``trainer.checkpoint``); ``file_complete`` is emitted only after the checkpoint that
holds the file's end is committed, so it appears exactly once per file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from trainer.checkpoint import CheckpointContent, rotate, step_dir_name, write_checkpoint
from trainer.events import round_loss
from trainer.export import write_export
from trainer.gold import GOLD, Rollback
from trainer.rng import capture_rng
from trainer.state import CompletedFile

log = logging.getLogger(__name__)


class Bookkeeping:
    """Checkpoint, gold, export and event-record methods of :class:`trainer.loop.Trainer`."""

    def record_rollback(self, rollback: Rollback) -> None:
        """Log and record a rollback to gold that happened as this trainer opened."""
        abandoned = self.state.current_file
        self.events.emit(
            "rolled_back_to_gold",
            gold_step=rollback.gold_step,
            from_step=rollback.from_step,
            moved=list(rollback.moved),
            kept_in=str(rollback.kept_in) if rollback.kept_in else None,
            in_progress=abandoned.name if abandoned else None,
        )
        if abandoned is not None:
            # Gold is usually taken mid-file; that file's rest is not trained again, as
            # the point of going back is to keep gold's model and move on.
            self.abandon_current(reason=f"rolled back to gold at step {rollback.gold_step}")

    def _reconcile_file_complete(self) -> None:
        """Emit the ``file_complete`` a crash may have cut off after its checkpoint committed."""
        if not self.state.files_completed:
            return
        last = self.state.files_completed[-1]
        for record in self.events.read_backwards(event="file_complete"):
            if record.get("sha256") == last.sha256 and record.get("end_step") == last.end_step:
                return
            if (record.get("end_step") or 0) < last.end_step:
                break
        log.info("recording the completion of %s that a crash cut off", last.name)
        self._emit_file_complete(last)

    def abandon_current(self, *, reason: str) -> None:
        """Drop the file in progress (what it taught stays in the weights; its steps stay
        counted); for content that is no longer to be trained, e.g. cancelled."""
        current = self.state.current_file
        if current is None:
            return
        self.state.current_file = None
        log.warning("abandoning %s at step %d: %s", current.name, self.state.global_step, reason)
        self.events.emit(
            "file_abandoned",
            file=current.name,
            sha256=current.sha256,
            start_step=current.start_step,
            target_step=current.target_step,
            step=self.state.global_step,
            reason=reason,
        )
        self.save_checkpoint(reason="abandon")

    def _emit_file_complete(self, done: CompletedFile) -> None:
        fields = dataclasses.asdict(done)
        self.events.emit("file_complete", file=fields.pop("name"), **fields)

    def save_checkpoint(self, *, reason: str) -> Path | None:
        """Commit the state at this optimizer-step boundary as ``step-NNNNNNNN``."""
        state = self.state
        started = time.monotonic()
        path = write_checkpoint(
            self.paths.checkpoints, step_dir_name(state.global_step), self._content()
        )
        self._last_saved_step = state.global_step
        removed = rotate(self.paths.checkpoints, keep=self.train.keep_checkpoints, protect=(path,))
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, state.global_step, removed)
        duration = time.monotonic() - started
        log.info("checkpoint %s saved (%s, %.2fs)", path.name, reason, duration)
        self.events.emit(
            "checkpoint_saved",
            step=state.global_step,
            path=str(path),
            reason=reason,
            duration_s=round(duration, 3),
            rotated=[p.name for p in removed],
        )
        return path

    def _content(self) -> CheckpointContent:
        """Everything at this optimizer-step boundary, as a checkpoint holds it."""
        state = self.state
        state.rng = capture_rng()
        state.train_config = self.train.to_dict()
        state.accum_micro_step = 0
        return CheckpointContent(
            model=self.model,
            optimizer_state=self.optimizer.state_dict(),
            config=self.lineage.model_config.to_dict(),
            tokenizer_json=self.tokenizer.to_json(),
            training_state=state.to_dict(),
        )

    def save_gold(self) -> Path:
        """Write the state at this step as ``gold`` (atomic, like every checkpoint)."""
        return write_checkpoint(self.paths.checkpoints, GOLD, self._content())

    def export(self, *, reason: str = "file_end") -> Path:
        """Write the half-precision copy for inference to ``checkpoints/export``."""
        started = time.monotonic()
        path = write_export(
            self.paths.checkpoints,
            model=self.model,
            config=self.lineage.model_config.to_dict(),
            tokenizer_json=self.tokenizer.to_json(),
            dtype=self.export_config.dtype,
            info={
                "step": self.state.global_step,
                "lineage_id": self.state.lineage_id,
                # Only a committed checkpoint is a source one can go back to.
                "source_checkpoint": None
                if self.unsaved_steps
                else step_dir_name(self.state.global_step),
                "reason": reason,
            },
        )
        duration = time.monotonic() - started
        log.info(
            "export written to %s (%s, %s, step %d, %.2fs)",
            path,
            self.export_config.dtype,
            reason,
            self.state.global_step,
            duration,
        )
        self.events.emit(
            "export_saved",
            step=self.state.global_step,
            path=str(path),
            dtype=self.export_config.dtype,
            reason=reason,
            duration_s=round(duration, 3),
        )
        return path

    @property
    def unsaved_steps(self) -> int:
        return self.state.global_step - self._last_saved_step

    def close(self) -> None:
        """Let go of the lineage (another process may then open it)."""
        self.scalars.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def finish(self) -> None:
        """Record a clean end of the session (``training_complete``) and close."""
        elapsed = time.monotonic() - self._session_start
        state = self.state
        steps = state.global_step - self._session_start_step
        tokens = state.tokens_processed - self._session_start_tokens
        vals = [e["val_loss"] for e in state.eval_history if e.get("val_loss") is not None]
        self.events.emit(
            "training_complete",
            global_step=state.global_step,
            steps_this_session=steps,
            tokens_this_session=tokens,
            duration_s=round(elapsed, 3),
            steps_per_s=round(steps / elapsed, 3) if elapsed > 0 else None,
            tokens_per_s=round(tokens / elapsed, 1) if elapsed > 0 else None,
            tokens_processed=state.tokens_processed,
            files_completed=len(state.files_completed),
            nan_skips_total=state.nan_skips_total,
            best_val_loss=round_loss(min(vals)) if vals else None,
            gold_step=state.gold["step"] if state.gold else None,
            gold_val_loss=state.gold["val_loss"] if state.gold else None,
        )
        self.close()
