"""One process's time on a lineage, as the event log tells it.

``training_start`` once the lineage is held; ``file_complete`` once per finished file,
only after the checkpoint that holds the file's end is committed (and again at the next
start if a crash cut it off after that commit, so it appears exactly once);
``training_complete`` at a clean end, with what this session did and the losses the
lineage ends it with.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from trainer.config import EvalConfig, GoldConfig, TrainConfig
from trainer.lineage import Lineage
from trainer.memory import MemoryEstimate
from trainer.records.events import EventLog, round_loss
from trainer.records.state import CompletedFile, TrainingState

log = logging.getLogger(__name__)


class Session:
    """The start, file completions and end of one process's training, in the event log."""

    def __init__(self, state: TrainingState, *, events: EventLog) -> None:
        self.state = state
        self.events = events
        self._started = time.monotonic()
        self._start_step = state.global_step
        self._start_tokens = state.tokens_processed

    def start(
        self,
        lineage: Lineage,
        *,
        device: torch.device,
        memory: MemoryEstimate,
        train: TrainConfig,
        evaluation: EvalConfig,
        gold: GoldConfig,
    ) -> None:
        """Record the optimizer resets opening found, a completion a crash cut off, and
        ``training_start``."""
        state = self.state
        for notice in lineage.notices:
            self.events.emit("optimizer_reset", **notice)
        self.reconcile_file_complete()
        self.events.emit(
            "training_start",
            global_step=state.global_step,
            resumed_from=str(lineage.resumed_from) if lineage.resumed_from else None,
            lineage_id=state.lineage_id,
            device=str(device),
            # CPU results are the same at any thread count; recorded for reports all the same.
            threads=torch.get_num_threads(),
            model={"parameters": lineage.model.num_params(), **lineage.model_config.to_dict()},
            train_config=train.to_dict(),
            eval_config=evaluation.to_dict(),
            gold_config=gold.to_dict(),
            gold_step=state.gold["step"] if state.gold else None,
            memory_estimate_bytes=memory.total,
            files_completed=len(state.files_completed),
            current_file=state.current_file.name if state.current_file else None,
        )

    def file_complete(self, done: CompletedFile) -> None:
        """``file_complete`` for a file whose end is committed in a checkpoint."""
        fields = dataclasses.asdict(done)
        self.events.emit("file_complete", file=fields.pop("name"), **fields)

    def reconcile_file_complete(self) -> None:
        """Emit the ``file_complete`` a crash may have cut off after its checkpoint committed."""
        if not self.state.files_completed:
            return
        last = self.state.files_completed[-1]
        for record in self.events.read_backwards():
            kind = record.get("event")
            if kind == "lineage_retired":
                break  # what is further back is another lineage's
            if kind == "progress" and _step_of(record) > last.end_step:
                # Training went on past the file's end, after an opening that reconciled
                # it: its completion is recorded, maybe further back than read_backwards
                # reads (a long file writes megabytes of progress events).
                return
            if kind != "file_complete":
                continue
            if record.get("sha256") == last.sha256 and record.get("end_step") == last.end_step:
                return
            if (record.get("end_step") or 0) < last.end_step:
                break
        log.info("recording the completion of %s that a crash cut off", last.name)
        self.file_complete(last)

    def finish(self) -> None:
        """Record a clean end of the session (``training_complete``)."""
        elapsed = time.monotonic() - self._started
        state = self.state
        steps = state.global_step - self._start_step
        tokens = state.tokens_processed - self._start_tokens
        vals = [e["val_loss"] for e in state.eval_history if e.get("val_loss") is not None]
        last_eval = state.eval_history[-1] if state.eval_history else {}
        val_loss = round_loss(last_eval.get("val_loss"))
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
            train_loss=round_loss(final_train_loss(state)),
            val_loss=val_loss,
            val_step=last_eval.get("step") if val_loss is not None else None,
        )


def final_train_loss(state: TrainingState) -> float | None:
    """The mean training loss of the newest file with trained steps: the file in progress,
    else the last finished one; None before any."""
    current = state.current_file
    if current is not None and current.loss_steps:
        return current.loss_sum / current.loss_steps
    if state.files_completed:
        return state.files_completed[-1].mean_loss
    return None


def _step_of(record: dict) -> int:
    step = record.get("step")
    return step if isinstance(step, int) else -1
