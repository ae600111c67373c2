"""What serving the operator's requests does to the lineage and the ledger: a rollback to
gold (and the files it undid), the cancel of the file in training.

The worker decides when (:mod:`service.worker.control`); these functions only do it, on
the trainer and the ledger they are given. A rollback closes the lineage and opens it
again at gold, so it returns the trainer to use from then on and the worker attaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.ledger import FileRecord, FileState, Ledger
from trainer.checkpoint import CheckpointError
from trainer.loop import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RollbackResult:
    """How a rollback to gold went."""

    trainer: Trainer
    """The lineage to go on with: at gold, or as it was if refused (opened again if it had
    to be closed)."""
    done: bool
    """The lineage is at gold."""
    from_step: int
    """The global step it was at when the rollback was served."""


def roll_back_to_gold(
    trainer: Trainer, *, request: str, gold: Path, reopen: Callable[..., Trainer]
) -> RollbackResult:
    """Roll the lineage of ``trainer`` back to its gold checkpoint (folder ``gold``) for the
    operator's ``request`` (ISO time), reopening it with ``reopen(**Trainer.open options)``.
    Refused (with an event) if there is no gold, or gold turns out unusable."""
    step = trainer.state.global_step
    if trainer.state.gold is None and not gold.is_dir():
        reason = "there is no gold checkpoint yet (no evaluation has promoted one)"
        refuse_rollback(trainer, request=request, reason=reason)
        return RollbackResult(trainer=trainer, done=False, from_step=step)
    if trainer.unsaved_steps:
        trainer.save_checkpoint(reason="before_rollback")
    current = trainer.state.current_file
    in_progress = {"name": current.name, "sha256": current.sha256} if current else None
    trainer.close()
    try:
        back = reopen(from_gold=True, rollback_request=request, in_progress=in_progress)
    except CheckpointError as exc:
        # Gold is unusable: carry on with the lineage as it was.
        again = reopen()
        refuse_rollback(again, request=request, reason=f"rollback to gold failed: {exc}", step=step)
        return RollbackResult(trainer=again, done=False, from_step=step)
    return RollbackResult(trainer=back, done=True, from_step=step)


def refuse_rollback(
    trainer: Trainer, *, request: str, reason: str, step: int | None = None
) -> None:
    """Refused for good: the lineage records the request as served (with its next
    checkpoint), so it is not refused again at every restart."""
    trainer.state.rollback_served = request
    log.error("rollback to gold refused: %s", reason)
    trainer.events.emit(
        "rollback_refused",
        step=trainer.state.global_step if step is None else step,
        reason=reason,
    )


def cancel_training(trainer: Trainer, ledger: Ledger, record: FileRecord) -> None:
    """Stop a file on request: what it taught so far stays in the weights, and a retry
    continues it."""
    step = trainer.state.global_step
    trainer.park_current(reason=f"cancelled on request at step {step}")
    cancelled = ledger.finish_cancel(record.id, step=step)
    trainer.events.emit(
        "file_cancelled", id=record.id, file=record.name, step=step, reason=cancelled.error
    )


def cancel_for_rollback(trainer: Trainer, ledger: Ledger, record: FileRecord, *, step: int) -> None:
    """A rollback to gold (``trainer`` is at gold) undid what this file taught since global
    ``step``: cancelled, with how to retry."""
    gold_step = trainer.state.global_step
    cancelled = ledger.finish_cancel(
        record.id,
        step=step,
        error=(
            f"the lineage was rolled back to gold (step {gold_step}) at step {step}, "
            "before this file finished; what it taught was undone. Retry it to train it "
            "again (it continues from gold's position in it, if gold holds part of it)."
        ),
    )
    trainer.events.emit(
        "file_cancelled", id=record.id, file=record.name, step=step, reason=cancelled.error
    )


def mark_rolled_back(trainer: Trainer, ledger: Ledger) -> list[FileRecord]:
    """The done files of this lineage that a rollback to gold undid (in the lineage's
    ``files_rolled_back`` and not trained again since) become ``rolled_back``, with the
    steps they had, each with a ``file_rolled_back`` event. Done right after a rollback,
    and again at every start, where it repairs a crash between the two."""
    state = trainer.state
    undone = {f.get("sha256") for f in state.files_rolled_back}
    if not undone:
        return []
    # Opened by a rollback (or finishing one), the trainer knows gold's step. Otherwise this
    # is a start after a crash between the rollback's commit and the marking, and nothing
    # has trained since: the lineage is at gold's step. (Files an older traind left done
    # after a rollback get the step the lineage is at now.)
    gold_step = trainer.rollback.gold_step if trainer.rollback else state.global_step
    marked = []
    for record in ledger.list_files(states=[FileState.DONE], limit=1_000_000)[0]:
        if record.lineage_id != state.lineage_id or record.sha256 not in undone:
            continue
        if state.completed(record.sha256) is not None:
            continue  # queued again after the rollback and trained again since
        rolled = ledger.mark_rolled_back(record.id, gold_step=gold_step)
        if rolled is None:
            continue
        trainer.events.emit(
            "file_rolled_back",
            id=rolled.id,
            file=rolled.name,
            sha256=rolled.sha256,
            start_step=rolled.start_step,
            end_step=rolled.end_step,
            gold_step=gold_step,
        )
        marked.append(rolled)
    return marked
