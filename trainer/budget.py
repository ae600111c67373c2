"""A file's budget of optimizer steps, fixed when it starts, and its record when it ends.

ARCHITECTURE.md rule 1: the budget is ``ceil(epochs * n_sequences / ((1 - replay) *
micro * accum * world))`` steps, counted from the global step the file starts at; both
numbers go into the training state (and so every checkpoint) and are never recomputed.
It counts the file's own sequences only: with replay (``trainer.replay``) a share of each
step comes from earlier drops, so the file takes more steps, never fewer of its own
sequences. Rule 14: the sequences each step takes, and the replayed share of them, are
fixed with them, whatever the settings later.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

from trainer.data import TokenizedFile
from trainer.parking import note_split, unpark
from trainer.records.events import EventLog, round_loss
from trainer.records.state import CompletedFile, FileProgress, TrainingState
from trainer.replay import own_per_step

log = logging.getLogger(__name__)


def steps_for_file(
    n_sequences: int, *, epochs: float, micro: int, accum: int, world: int, replay: float = 0.0
) -> int:
    """ARCHITECTURE.md rule 1: the file's budget in optimizer steps (at least one), in
    exact fractions of the numbers as written (2.3 epochs of 10 sequences are 23)."""
    own = own_per_step(micro * accum * world, replay)
    return max(1, math.ceil(Fraction(repr(float(epochs))) * n_sequences / own))


def refuse_another(state: TrainingState, data: TokenizedFile, *, name: str) -> None:
    """RuntimeError unless ``data`` may be trained now: no other file is in progress, and
    a file that started keeps the holdout it started with (``Trainer.prepare`` sees to it)."""
    current = state.current_file
    if current is not None and current.sha256 != data.sha256:
        raise RuntimeError(f"{current.name} is in progress; finish it before starting {name}")
    started = current or state.parked_file(data.sha256)
    if started is not None and started.holdout_fraction != data.holdout_fraction:
        raise RuntimeError(
            f"{name} was prepared with holdout {data.holdout_fraction}, but it started "
            f"with {started.holdout_fraction}; use Trainer.prepare"
        )


def take_up(
    state: TrainingState,
    data: TokenizedFile,
    *,
    name: str,
    epochs: float,
    world_size: int,
    events: EventLog,
    holdout_wanted: float = 0.0,
    replay: float = 0.0,
) -> FileProgress:
    """Make ``data`` the file in progress: continued where it stopped or was parked
    (``trainer.parking``), else begun with its budget. ``holdout_wanted``, the configured
    ``eval.holdout_fraction``, lets the start line say when the file was too small for it;
    ``replay`` is the share of each step a file that begins replays (0 with no earlier
    drop)."""
    current = state.current_file
    if current is None:
        current = unpark(state, data.sha256, name=name, events=events)
    if current is None:
        current = begin_file(
            state,
            data,
            name=name,
            epochs=epochs,
            world_size=world_size,
            events=events,
            holdout_wanted=holdout_wanted,
            replay=replay,
        )
    else:
        log.info(
            "%s: resuming at step %d/%d (epoch %d, sequence %d)",
            name,
            state.global_step,
            current.target_step,
            current.epoch,
            current.cursor,
        )
    note_split(state, current, world_size=world_size)
    return current


def begin_file(
    state: TrainingState,
    data: TokenizedFile,
    *,
    name: str,
    epochs: float,
    world_size: int,
    events: EventLog,
    holdout_wanted: float = 0.0,
    replay: float = 0.0,
) -> FileProgress:
    """Make ``data`` the file in progress with its budget from this global step on, and
    say so (``file_start``, and a start line that says what was held out and replayed)."""
    per_step = state.micro_batch_size * state.grad_accum_steps * world_size
    steps = steps_for_file(
        data.n_sequences,
        epochs=epochs,
        micro=state.micro_batch_size,
        accum=state.grad_accum_steps,
        world=world_size,
        replay=replay,
    )
    current = FileProgress(
        name=name,
        sha256=data.sha256,
        n_sequences=data.n_sequences,
        steps_for_file=steps,
        start_step=state.global_step,
        target_step=state.global_step + steps,
        holdout_fraction=data.holdout_fraction,
        n_holdout=data.holdout.n_sequences if data.holdout else 0,
        sequences_per_step=per_step,
        replay_fraction=replay,
    )
    state.current_file = current
    events.emit(
        "file_start",
        file=name,
        sha256=data.sha256,
        start_step=current.start_step,
        target_step=current.target_step,
        steps=steps,
        n_sequences=data.n_sequences,
        n_tokens=data.n_tokens,
        format=data.format,
        n_holdout=current.n_holdout,
        sequences_per_step=per_step,
        replay_fraction=replay,
    )
    held = describe_holdout(data, wanted=holdout_wanted)
    replayed = f"; {replay:.0%} of each step replayed from earlier drops" if replay else ""
    log.info(
        "%s: %d sequences, %d steps (global %d -> %d)%s%s",
        name,
        data.n_sequences,
        steps,
        current.start_step,
        current.target_step,
        f"; {held}" if held else "",
        replayed,
    )
    return current


def describe_holdout(data: TokenizedFile, *, wanted: float) -> str | None:
    """What the start of a file says of its held-out part (``wanted``: the configured
    ``eval.holdout_fraction``; a file too small for it holds out none); None when none
    was wanted."""
    held = data.holdout.n_examples if data.holdout else 0
    total = data.n_examples + held
    if wanted <= 0 and held == 0:
        return None
    if held == 0:
        return (
            f"held out: none of its {total} examples (too small for eval.holdout_fraction "
            f"{wanted:g}: the recent set scores the other files only)"
        )
    return f"held out: {held} of its {total} examples, for the recent set"


def advance(
    state: TrainingState,
    current: FileProgress,
    *,
    sequences: int,
    tokens: int,
    loss: float | None,
    replayed_sequences: int = 0,
    replayed_tokens: int = 0,
) -> None:
    """Count one optimizer step of the file in progress: the global step, the data
    position (in the file's own sequences, rule 14), the tokens (own and replayed), and the
    loss when it has one."""
    state.global_step += 1
    state.tokens_processed += tokens + replayed_tokens
    current.cursor += sequences
    current.tokens += tokens
    current.replayed_sequences += replayed_sequences
    current.replayed_tokens += replayed_tokens
    if loss is not None:
        current.loss_sum += loss
        current.loss_steps += 1


def end_file(state: TrainingState) -> CompletedFile:
    """Move the file in progress, at its target, to the finished files."""
    current = state.current_file
    done = CompletedFile(
        name=current.name,
        sha256=current.sha256,
        start_step=current.start_step,
        end_step=state.global_step,
        n_sequences=current.n_sequences,
        tokens=current.tokens,
        mean_loss=round_loss(current.loss_sum / current.loss_steps) if current.loss_steps else None,
        duration_s=round(current.elapsed_s, 3),
        holdout_fraction=current.holdout_fraction,
        n_holdout=current.n_holdout,
        replay_fraction=current.replay_fraction,
        replayed_sequences=current.replayed_sequences,
        replayed_tokens=current.replayed_tokens,
    )
    state.files_completed.append(done)
    state.current_file = None
    return done
