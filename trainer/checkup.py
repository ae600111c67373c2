"""The periodic checkup of a training run: evaluate, record, and maybe promote to gold.

The trainer calls :meth:`Checkup.run` every ``eval.interval`` global steps, at the end
of every file (``eval.at_file_end``), at a lineage's step 0 (the baseline a trained model
must beat) and when an operator asks (``POST /v1/eval``): the eval sets are scored, the ``eval`` event and the two-line console summary are written, and a new
best validation loss goes through the gold guards (``trainer.gold``). A promotion writes
``checkpoints/gold`` and a ``gold_checkpoint`` event; a blocked candidate writes
``gold_blocked`` with the reason. The history the guards need is kept in the training
state, so it survives restarts with the checkpoint it belongs to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from trainer.checkpointer import Checkpointer
from trainer.config import EvalConfig, GoldConfig, TrainConfig
from trainer.evaluate import EvalResult
from trainer.forgetting import report as forgetting_report
from trainer.forgetting import scored_drops
from trainer.gold import EvalPoint, decide_gold
from trainer.optim import lr_at
from trainer.progress import Scalars, format_duration, progress_pct
from trainer.records.events import EVAL_SET_PREFIX, FORGETTING, loss_pair, round_loss, utc_now
from trainer.records.state import CompletedFile, FileProgress

log = logging.getLogger(__name__)

HISTORY = 50
"""Evaluations kept in the training state (the guards look at the last few)."""

TRIGGERS = ("interval", "file_end", "lineage_start", "request")
"""Why an evaluation ran, as its ``eval`` event's ``trigger`` says."""


class Checkup:
    """Evaluation and gold decisions for one trainer."""

    def __init__(
        self,
        evaluate: Callable[[list[CompletedFile]], EvalResult],
        *,
        checkpointer: Checkpointer,
        scalars: Scalars,
        train: TrainConfig,
        evaluation: EvalConfig,
        gold: GoldConfig,
    ) -> None:
        self.evaluate = evaluate
        """Scores the model on the eval sets, and the held-out part of each finished drop
        it is given alone (``Evaluator.evaluate`` bound to the model)."""
        self.checkpointer = checkpointer
        """Holds the training state and event log, and writes gold."""
        self.scalars = scalars
        self.train = train
        self.evaluation = evaluation
        self.gold_config = gold
        self._train_loss_sum = 0.0
        self._train_loss_steps = 0
        self.on_promote: Callable[[], None] | None = None
        """Called after a new gold is committed (the trainer's export follows gold)."""

    def add_train_loss(self, loss: float | None) -> None:
        """Count a training step's loss towards the next evaluation's train loss."""
        if loss is not None:
            self._train_loss_sum += loss
            self._train_loss_steps += 1

    def _take_train_loss(self) -> float | None:
        steps, total = self._train_loss_steps, self._train_loss_sum
        self._train_loss_sum, self._train_loss_steps = 0.0, 0
        return total / steps if steps else None

    def run(
        self,
        current: FileProgress | None,
        *,
        trigger: str = "interval",
        eta_s: float | None = None,
    ) -> dict[str, Any]:
        """Evaluate now (at an optimizer-step boundary); returns the ``eval`` event.

        ``current`` is the file in progress, or the one that just ended (at ``file_end``);
        ``trigger`` says why (:data:`TRIGGERS`); ``eta_s``, the seconds left to the
        file's target, goes into the console summary.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown evaluation trigger {trigger!r}")
        state, events = self.checkpointer.state, self.checkpointer.events
        step = state.global_step
        result = self.evaluate(
            scored_drops(state.files_completed, count=self.evaluation.forgetting_drops)
        )
        deciding = self.evaluation.deciding_set
        rounded = {name: round_loss(loss) for name, loss in result.losses.items()}
        sets = {name: loss for name, loss in rounded.items() if loss is not None}
        point = EvalPoint(
            step=step,
            val_loss=sets.get(deciding) if deciding else None,
            train_loss=round_loss(self._take_train_loss()),
            sets=sets,
        )
        forgetting = forgetting_report(
            state, result.drop_losses, threshold=self.gold_config.forgetting_threshold
        )
        extra = {FORGETTING: forgetting} if forgetting else {}
        event = events.emit(
            "eval",
            step=step,
            trigger=trigger,
            elapsed_s=round(self._elapsed(current), 3),
            tokens_processed=state.tokens_processed,
            progress_pct=_progress(current, step),
            lr=lr_at(max(step - 1, 0), self.train),
            file=current.name if current else None,
            val_loss=point.val_loss,
            val_set=deciding,
            train_loss=point.train_loss,
            **{f"{EVAL_SET_PREFIX}{name}": loss for name, loss in sets.items()},
            eval_duration_s=round(result.duration_s, 3),
            samples=result.samples,
            **extra,
        )
        self._print(point, current, deciding=deciding, eta_s=eta_s, trigger=trigger)
        if forgetting:
            worst = forgetting["worst"]
            log.info(
                "       forgetting: worst %s +%.1f%% (%.4f, best %.4f @ step %d), %d of %d drops",
                worst["file"],
                100 * worst["increase"],
                worst["loss"],
                worst["best"],
                worst["best_step"],
                forgetting["measured"],
                forgetting["drops_total"],
            )
        self.scalars.evaluation(step, sets)
        for sample in result.samples:
            log.info("sample %r -> %r", sample["prompt"], sample["completion"])
        history = [e.get("val_loss") for e in state.eval_history]
        state.eval_history.append(point.to_record())
        del state.eval_history[:-HISTORY]
        if trigger == "lineage_start":
            # The baseline, not a candidate: nothing was trained yet to guard against.
            return event
        decision = decide_gold(
            point, history=history, gold=state.gold, config=self.gold_config, forgetting=forgetting
        )
        if decision.promote:
            self._promote(point)
        elif decision.candidate:
            prev = state.gold["val_loss"] if state.gold else None
            log.warning("gold blocked at step %d: %s", step, decision.reason)
            events.emit(
                "gold_blocked",
                step=step,
                val_loss=point.val_loss,
                prev_best=prev,
                train_loss=point.train_loss,
                guards=list(decision.guards),
                reason=decision.reason,
            )
        return event

    def baseline(self, current: FileProgress, *, has_work: bool) -> None:
        """Evaluate the model before the lineage's first step (with ``eval.at_file_end``,
        and when there is something to score): the baseline later losses compare with."""
        state = self.checkpointer.state
        due = state.global_step == 0 and not state.eval_history
        if due and self.evaluation.at_file_end and has_work:
            self.run(current, trigger="lineage_start")

    def _promote(self, point: EvalPoint) -> None:
        state = self.checkpointer.state
        prev = state.gold["val_loss"] if state.gold else None
        record = {**point.to_record(), "prev_best": prev, "promoted_at": utc_now()}
        # The record goes into the state first, so gold's own training_state says it is gold.
        state.gold = record
        state.gold_history.append(record)
        started = time.monotonic()
        path = self.checkpointer.save_gold()
        new, was = loss_pair(point.val_loss, prev)
        log.info(
            "new gold at step %d: val loss %s (was %s); saved in %.2fs",
            point.step,
            new,
            was,
            time.monotonic() - started,
        )
        self.checkpointer.events.emit(
            "gold_checkpoint",
            step=point.step,
            val_loss=point.val_loss,
            prev_best=prev,
            train_loss=point.train_loss,
            sets=point.sets,
            path=str(path),
        )
        if self.on_promote is not None:
            self.on_promote()

    def _elapsed(self, current: FileProgress | None) -> float:
        """Training seconds of the lineage: finished files plus the one in progress (a
        file that just ended is among the finished ones already)."""
        state = self.checkpointer.state
        done = sum(f.duration_s for f in state.files_completed)
        in_progress = current is not None and state.current_file is current
        return done + (current.elapsed_s if in_progress else 0.0)

    def _print(
        self,
        point: EvalPoint,
        current: FileProgress | None,
        *,
        deciding: str | None,
        eta_s: float | None,
        trigger: str,
    ) -> None:
        """The two-line console summary: progress, then the losses."""
        state = self.checkpointer.state
        eta = format_duration(eta_s) if eta_s is not None else "-"
        where = (
            f"{current.name} {_progress(current, point.step):.1f}%" if current else "between files"
        )
        why = "" if trigger == "interval" else f" ({trigger.replace('_', ' ')})"
        # "lineage trained": all files so far, unlike the per-file time of progress lines.
        log.info(
            "eval @ step %d%s | %s | lineage trained %s, file ETA %s | %s tokens",
            point.step,
            why,
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
            shown, _ = loss_pair(state.gold["val_loss"], point.val_loss)
            parts.append(f"gold {shown} @ step {state.gold['step']}")
        log.info("       %s", " | ".join(parts))


def _progress(current: FileProgress | None, step: int) -> float | None:
    if current is None:
        return None
    pct = progress_pct(step, start_step=current.start_step, target_step=current.target_step)
    return round(pct, 2)
