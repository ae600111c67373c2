"""Files set aside unfinished, and taken up again where they stopped (ARCHITECTURE.md rules 13-14).

A file stops before its target when it is cancelled, fails (it crashed the worker too
often), is rolled back, or has no ledger record to train it under. What the lineage
learned from it stays in the weights, so starting it over would train part of it twice.
Instead its progress is *parked* in the training state: cursor, step size, steps left.
When the same content is trained again (``traind retry``, a new drop of it, ``traind
train`` with it), it continues at its cursor with the steps it had left, counted from the
global step it resumes at; a file that never started simply starts.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from trainer.records.events import EventLog
from trainer.records.state import FileProgress, TrainingState
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)

MAX_PARKED = 100
"""Parked files kept; beyond this the oldest is forgotten (it would start over)."""


def park_current(state: TrainingState, *, events: EventLog, reason: str) -> FileProgress | None:
    """Set the file in progress aside unfinished; returns it (None if there was none).

    The caller commits that in a checkpoint (reason ``park``).
    """
    current = state.current_file
    if current is None:
        return None
    state.current_file = None
    current.parked_at = state.global_step
    state.parked = [f for f in state.parked if f.sha256 != current.sha256] + [current]
    if len(state.parked) > MAX_PARKED:
        forgotten = state.parked.pop(0)
        log.info(
            "forgetting the parked progress of %s (over %d parked)", forgotten.name, MAX_PARKED
        )
    steps_left = current.target_step - state.global_step
    log.warning(
        "setting %s aside at step %d with %d of its %d steps left: %s",
        current.name,
        state.global_step,
        steps_left,
        current.steps_for_file,
        reason,
    )
    events.emit(
        "file_parked",
        file=current.name,
        sha256=current.sha256,
        start_step=current.start_step,
        target_step=current.target_step,
        step=state.global_step,
        steps_left=steps_left,
        cursor=current.cursor,
        reason=reason,
    )
    return current


def unpark(
    state: TrainingState, sha256: str, *, name: str, events: EventLog
) -> FileProgress | None:
    """Make the parked progress of this content the file in progress again, with the steps
    it had left counted from the current global step; None if nothing is parked for it."""
    parked = state.parked_file(sha256)
    if parked is None:
        return None
    state.parked.remove(parked)
    steps_left = parked.target_step - parked.parked_at
    parked.target_step = state.global_step + steps_left
    parked.name = name
    parked.parked_at = None
    state.current_file = parked
    log.info(
        "%s: continuing where the lineage set it aside (sequence %d of %d, epoch %d): "
        "%d of its %d steps left, global %d -> %d",
        name,
        parked.cursor % parked.n_sequences,
        parked.n_sequences,
        parked.epoch,
        steps_left,
        parked.steps_for_file,
        state.global_step,
        parked.target_step,
    )
    events.emit(
        "file_resumed",
        file=name,
        sha256=sha256,
        step=state.global_step,
        target_step=parked.target_step,
        steps_left=steps_left,
        cursor=parked.cursor,
    )
    return parked


def note_split(state: TrainingState, current: FileProgress, *, world_size: int) -> None:
    """Say so when the batch settings no longer match the file's step size (rule 14)."""
    configured = state.micro_batch_size * state.grad_accum_steps * world_size
    if configured == current.sequences_per_step:
        return
    micro = min(state.micro_batch_size, current.sequences_per_step)
    log.info(
        "%s keeps the %d sequences per optimizer step it started with until it ends "
        "(%d micro-batches of up to %d); the batch settings in force (%d x %d) apply from "
        "the next file",
        current.name,
        current.sequences_per_step,
        math.ceil(current.sequences_per_step / micro),
        micro,
        state.micro_batch_size,
        state.grad_accum_steps,
    )


def holdout_for(state: TrainingState, path: Path, *, sha256: str | None, default: float) -> float:
    """The holdout to prepare ``path`` with: a file in progress or parked keeps the one it
    started with (its sequences, and so its cursor and budget, depend on it); a new file
    takes ``default``, the setting."""
    if state.current_file is None and not state.parked:
        return default
    sha256 = sha256 or file_sha256(path)
    current = state.current_file
    if current is not None and sha256 == current.sha256:
        return current.holdout_fraction
    parked = state.parked_file(sha256)
    if parked is not None:
        return parked.holdout_fraction
    return default
