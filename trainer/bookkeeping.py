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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trainer.checkpoint import (
    CheckpointContent,
    CheckpointError,
    rotate,
    step_dir_name,
    write_checkpoint,
)
from trainer.export import verify_export, write_export
from trainer.gold import GOLD
from trainer.parking import park_current
from trainer.records.events import round_loss
from trainer.records.manifest import EXPORT_DIR, RETIRED_DIR
from trainer.records.space import DiskFullError
from trainer.records.state import CompletedFile
from trainer.records.traces import owner
from trainer.rng import capture_rng
from trainer.rollback import Rollback, finish_rollback

T = TypeVar("T")

log = logging.getLogger(__name__)


class Bookkeeping:
    """Checkpoint, gold, export and event-record methods of :class:`trainer.loop.Trainer`."""

    def record_rollback(self, rollback: Rollback) -> None:
        """Record the rollback to gold done as this trainer opened, commit the lineage at
        gold with it, and only then call the rollback done (``trainer.rollback``)."""
        state = self.state
        abandoned = state.current_file
        if rollback.request is not None:
            state.rollback_served = rollback.request
        undone = {f.get("sha256") for f in state.files_rolled_back}
        state.files_rolled_back += [f for f in rollback.files_undone if f["sha256"] not in undone]
        self.events.emit(
            "rolled_back_to_gold",
            gold_step=rollback.gold_step,
            from_step=rollback.from_step,
            moved=list(rollback.moved),
            kept_in=str(rollback.kept_in) if rollback.kept_in else None,
            in_progress=abandoned.name if abandoned else None,
            training=(rollback.in_progress or {}).get("name"),
            files_undone=[f["name"] for f in rollback.files_undone],
            resumed=rollback.resumed,
        )
        if abandoned is not None:
            # Gold is usually taken mid-file; that file's rest is not trained on its own, as
            # the point of going back is to keep gold's model and move on. Parked, it
            # continues from gold's position if it is retried.
            self.park_current(reason=f"rolled back to gold at step {rollback.gold_step}")
        else:
            self.save_checkpoint(reason="rollback")
        finish_rollback(self.paths.checkpoints)

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

    def park_current(self, *, reason: str) -> None:
        """Set the file in progress aside unfinished (what it taught stays in the weights;
        training the same content again continues it): see ``trainer.parking``."""
        park_current(self, reason=reason)

    def _emit_file_complete(self, done: CompletedFile) -> None:
        fields = dataclasses.asdict(done)
        self.events.emit("file_complete", file=fields.pop("name"), **fields)

    def save_checkpoint(self, *, reason: str) -> Path | None:
        """Commit the state at this optimizer-step boundary as ``step-NNNNNNNN``."""
        state = self.state
        started = time.monotonic()
        content = self._content()
        path = self.with_space(
            lambda: write_checkpoint(
                self.paths.checkpoints, step_dir_name(state.global_step), content
            )
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
        self._refuse_foreign(GOLD)
        content = self._content()
        return self.with_space(lambda: write_checkpoint(self.paths.checkpoints, GOLD, content))

    def with_space(self, write: Callable[[], T]) -> T:
        """``write()``; when the disk is full, ``on_disk_full`` (if set) waits for space
        and it is tried again, so no step is lost and no file is blamed. Without it, the
        DiskFullError goes to the caller (``traind train`` stops with it)."""
        while True:
            try:
                return write()
            except DiskFullError as exc:
                if self.on_disk_full is None:
                    raise
                self.on_disk_full(exc)

    def _refuse_foreign(self, name: str) -> None:
        """One lineage never overwrites another's gold or export (design rule 15)."""
        folder = self.paths.checkpoints / name
        other = owner(folder)
        if other is not None and other != self.state.lineage_id:
            raise CheckpointError(
                f"{folder} belongs to lineage {other[:8]}, not to this one "
                f"({self.state.lineage_id[:8]}); traind never overwrites another lineage's "
                f"{name}: move it aside (e.g. under {self.paths.checkpoints / RETIRED_DIR}/)"
            )

    def restore_export(self) -> None:
        """Write the export again if a crash (or a person) left none where the lineage has
        finished files: it is not to wait for the next file."""
        if not self.export_config.enabled or not self.state.files_completed:
            return
        problem = verify_export(self.paths.checkpoints / EXPORT_DIR, deep=False)
        if problem is None:
            return
        log.warning("checkpoints/%s is not usable (%s); writing it again", EXPORT_DIR, problem)
        self.export(reason="restore")

    def export(self, *, reason: str = "file_end") -> Path:
        """Write the half-precision copy for inference to ``checkpoints/export``."""
        started = time.monotonic()
        self._refuse_foreign(EXPORT_DIR)
        path = self.with_space(lambda: self._write_export(reason))
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

    def _write_export(self, reason: str) -> Path:
        return write_export(
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
