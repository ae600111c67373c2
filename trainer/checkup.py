"""The periodic checkup of a training run: evaluate, record, and maybe promote to gold.

Every ``eval.interval`` global steps the trainer calls :meth:`Checkup.run`: the eval sets
are scored, the ``eval`` event and the two-line console summary are written, and a new
best validation loss goes through the gold guards (``trainer.gold``). A promotion writes
``checkpoints/gold`` and a ``gold_checkpoint`` event; a blocked candidate writes
``gold_blocked`` with the reason. The history the guards need is kept in the training
state, so it survives restarts with the checkpoint it belongs to.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from trainer.gold import EvalPoint, decide_gold
from trainer.progress import format_duration, progress_pct
from trainer.records.events import round_loss, utc_now
from trainer.records.state import FileProgress
from trainer.schedule import lr_at

if TYPE_CHECKING:
    from trainer.loop import Trainer

log = logging.getLogger(__name__)

HISTORY = 50
"""Evaluations kept in the training state (the guards look at the last few)."""


class Checkup:
    """Evaluation and gold decisions for one trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._train_loss_sum = 0.0
        self._train_loss_steps = 0

    def add_train_loss(self, loss: float | None) -> None:
        """Count a training step's loss towards the next evaluation's train loss."""
        if loss is not None:
            self._train_loss_sum += loss
            self._train_loss_steps += 1

    def _take_train_loss(self) -> float | None:
        steps, total = self._train_loss_steps, self._train_loss_sum
        self._train_loss_sum, self._train_loss_steps = 0.0, 0
        return total / steps if steps else None

    def run(self, current: FileProgress | None) -> dict[str, Any]:
        """Evaluate now (at an optimizer-step boundary); returns the ``eval`` event."""
        trainer = self.trainer
        state = trainer.state
        step = state.global_step
        result = trainer.evaluator.evaluate(
            trainer.model, device=trainer.device, autocast=trainer.steps.autocast
        )
        deciding = trainer.evaluation.deciding_set
        rounded = {name: round_loss(loss) for name, loss in result.losses.items()}
        sets = {name: loss for name, loss in rounded.items() if loss is not None}
        point = EvalPoint(
            step=step,
            val_loss=sets.get(deciding) if deciding else None,
            train_loss=round_loss(self._take_train_loss()),
            sets=sets,
        )
        event = trainer.events.emit(
            "eval",
            step=step,
            elapsed_s=round(self._elapsed(current), 3),
            tokens_processed=state.tokens_processed,
            progress_pct=_progress(current, step),
            lr=lr_at(max(step - 1, 0), trainer.train),
            file=current.name if current else None,
            val_loss=point.val_loss,
            val_set=deciding,
            train_loss=point.train_loss,
            **{f"eval_{name}": loss for name, loss in sets.items()},
            eval_duration_s=round(result.duration_s, 3),
            samples=result.samples,
        )
        self._print(point, current, deciding=deciding)
        trainer.scalars.evaluation(step, sets)
        for sample in result.samples:
            log.info("sample %r -> %r", sample["prompt"], sample["completion"])
        history = [e.get("val_loss") for e in state.eval_history]
        decision = decide_gold(point, history=history, gold=state.gold, config=trainer.gold_config)
        state.eval_history.append(point.to_record())
        del state.eval_history[:-HISTORY]
        if decision.promote:
            self._promote(point)
        elif decision.candidate:
            prev = state.gold["val_loss"] if state.gold else None
            log.warning("gold blocked at step %d: %s", step, decision.reason)
            trainer.events.emit(
                "gold_blocked",
                step=step,
                val_loss=point.val_loss,
                prev_best=prev,
                train_loss=point.train_loss,
                guards=list(decision.guards),
                reason=decision.reason,
            )
        return event

    def _promote(self, point: EvalPoint) -> None:
        trainer = self.trainer
        state = trainer.state
        prev = state.gold["val_loss"] if state.gold else None
        record = {**point.to_record(), "prev_best": prev, "promoted_at": utc_now()}
        # The record goes into the state first, so gold's own training_state says it is gold.
        state.gold = record
        state.gold_history.append(record)
        started = time.monotonic()
        path = trainer.save_gold()
        if trainer.on_gold is not None:
            trainer.on_gold(path, point.step)
        log.info(
            "new gold at step %d: val loss %.4f (was %s); saved in %.2fs",
            point.step,
            point.val_loss,
            f"{prev:.4f}" if prev is not None else "none",
            time.monotonic() - started,
        )
        trainer.events.emit(
            "gold_checkpoint",
            step=point.step,
            val_loss=point.val_loss,
            prev_best=prev,
            train_loss=point.train_loss,
            sets=point.sets,
            path=str(path),
        )

    def _elapsed(self, current: FileProgress | None) -> float:
        """Training seconds of the lineage: finished files plus the one in progress."""
        done = sum(f.duration_s for f in self.trainer.state.files_completed)
        return done + (current.elapsed_s if current else 0.0)

    def _print(self, point: EvalPoint, current: FileProgress | None, *, deciding: str | None):
        """The two-line console summary: progress, then the losses."""
        trainer = self.trainer
        state = trainer.state
        report = trainer.last_report
        eta = format_duration(report.eta_s) if report else "-"
        where = (
            f"{current.name} {_progress(current, point.step):.1f}%" if current else "between files"
        )
        log.info(
            "eval @ step %d | %s | elapsed %s ETA %s | %s tokens",
            point.step,
            where,
            format_duration(self._elapsed(current)),
            eta,
            f"{state.tokens_processed:,}",
        )
        parts = [
            f"val {point.val_loss:.4f} ({deciding})" if point.val_loss is not None else "val n/a"
        ]
        parts += [f"{name} {loss:.4f}" for name, loss in point.sets.items() if name != deciding]
        if point.train_loss is not None:
            parts.append(f"train {point.train_loss:.4f}")
        if state.gold:
            parts.append(f"gold {state.gold['val_loss']:.4f} @ {state.gold['step']}")
        log.info("       %s", " | ".join(parts))


def _progress(current: FileProgress | None, step: int) -> float | None:
    if current is None:
        return None
    pct = progress_pct(step, start_step=current.start_step, target_step=current.target_step)
    return round(pct, 2)
