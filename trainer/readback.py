"""What is done with each optimizer step's loss once the host has it.

With ``train.readback = step`` that is at once, after every step. With ``log`` (the
default on CUDA) a step's loss and gradient norm stay on the device and the steps wait
here, to be read back together, with one sync, at the next boundary that needs them: a
progress line, an evaluation, a checkpoint (any save settles first, so no committed
state lacks a step's loss) and the file's end. Settling replays, step by step and in
order, exactly what an immediate readback does: the skipped step's report and the
rewind after too many (``trainer.guard``), the file's and the progress meter's loss, the
evaluation's train loss, the step report and the scalars. So both modes commit the same
state and events; only when they happen differs (a rewind comes at the boundary that
reads the skips, at most ``train.log_interval`` steps later).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainer.checkup import Checkup
from trainer.guard import Guard
from trainer.progress import ProgressMeter, Scalars, StepReport, next_report
from trainer.records.state import FileProgress
from trainer.rows import StepRows
from trainer.step import UpdateResult, read_back


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One optimizer step taken, its numbers perhaps still on the device."""

    step: int
    """The global step after it (what reports and events call it)."""
    result: UpdateResult | None
    """The update; None for a step without targets (nothing to learn, no loss)."""
    rows: StepRows
    """Its rows, to name the lines of a skipped step."""
    current: FileProgress
    """The file in progress it trained."""
    meter: ProgressMeter
    """The progress meter of that file."""
    tokens: int
    """Tokens it trained (own and replayed)."""
    seconds: float
    """Host time it took (with the readback deferred, the time to queue it)."""
    lr: float
    """Its learning rate."""


class Readback:
    """The steps not yet read back, and their settling."""

    def __init__(self, *, guard: Guard, checkup: Checkup, scalars: Scalars) -> None:
        self.guard = guard
        self.checkup = checkup
        self.scalars = scalars
        self.pending: list[StepRecord] = []
        self.last_report: StepReport | None = None
        """The report of the newest step settled (the worker's heartbeat shows it)."""

    def add(self, record: StepRecord) -> None:
        self.pending.append(record)

    def settle(self) -> None:
        """Read back every pending step (one sync) and account for each, in order."""
        records, self.pending = self.pending, []  # a rewind's save settles again: nothing
        if not records:
            return
        updated = [r for r in records if r.result is not None]
        started = time.monotonic()
        numbers = iter(read_back([r.result for r in updated]))
        # On an accelerator the host only queued most of these steps, and the device's
        # time shows in the wait just now: each step is charged an equal share of the
        # whole, so rates and ETAs hold (per-step host times would be near zero).
        seconds = (sum(r.seconds for r in records) + time.monotonic() - started) / len(records)
        for record in records:
            loss = None
            if record.result is not None:
                value, norm, applied = next(numbers)
                if applied:
                    loss = value
                else:
                    self.guard.record_skip(record.rows, step=record.step - 1, loss=value, norm=norm)
            if loss is not None:
                record.current.loss_sum += loss
                record.current.loss_steps += 1
            record.meter.add(tokens=record.tokens, loss=loss, seconds=seconds)
            self.checkup.add_train_loss(loss)
            report = self.last_report = next_report(
                self.last_report,
                step=record.step,
                target_step=record.current.target_step,
                loss=loss,
                lr=record.lr,
                tokens=record.tokens,
                seconds=seconds,
            )
            self.scalars.step(
                record.step, loss=loss, lr=report.lr, tokens_per_s=report.tokens_per_s
            )
        self.guard.rewind_if_needed(records[-1].rows)
