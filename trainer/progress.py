"""How far training is, as people see it: the latest step's report, the console
progress line (step/target, %, elapsed, ETA, tokens/s, loss, lr) and the ``progress``
event written beside it (from the same :class:`Interval`), and the optional TensorBoard
scalars.

The scalars (``train/loss``, ``val/<set>``, ``lr``, ``tokens_per_sec``) are behind the
``tensorboard`` extra (``pip install 'traind[tensorboard]'``) and the setting
``eval.tensorboard``. Each is keyed by the global step, so the curves of one lineage
continue across files and restarts in ``<paths.state>/tensorboard``; a restart purges
what a crashed run logged past the checkpoint it resumes from, so a resumed stretch is
not drawn twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.records.events import EventLog, round_loss
from trainer.records.state import FileProgress

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_rate(tokens_per_s: float) -> str:
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M tok/s"
    if tokens_per_s >= 1e3:
        return f"{tokens_per_s / 1e3:.1f}k tok/s"
    return f"{tokens_per_s:.0f} tok/s"


def progress_pct(step: int, *, start_step: int, target_step: int) -> float:
    """How far ``step`` is through a file's steps, in percent."""
    return 100.0 * (step - start_step) / max(1, target_step - start_step)


@dataclass(frozen=True, kw_only=True)
class Interval:
    """The optimizer steps of a file since its previous report: what the progress line and
    the ``progress`` event both say of them, computed once."""

    loss: float | None
    """Mean loss of the steps that had one (skipped and target-less steps left out); None
    if none had."""
    tokens: int
    """Input tokens the steps trained on (replayed ones included)."""
    seconds: float
    """The steps' own training time (not the evaluations or saves between them)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


@dataclass(kw_only=True)
class ProgressMeter:
    """Accumulates one log interval's worth of steps and renders the line."""

    file_name: str
    """Label of the file being trained."""
    start_step: int
    """The file's start step."""
    target_step: int
    """The file's target step."""
    session_start_step: int
    """Global step when this process started on the file (ETA counts only its pace)."""
    started: float = field(default_factory=time.monotonic)
    """Monotonic time when this process started on the file."""
    prior_elapsed: float = 0.0
    """Seconds spent on the file by earlier processes."""
    _tokens: int = 0
    _seconds: float = 0.0
    _loss_sum: float = 0.0
    _loss_steps: int = 0

    @classmethod
    def of_file(cls, current: FileProgress, *, name: str, step: int) -> ProgressMeter:
        """A meter for ``current``, labelled ``name``, started at global step ``step``."""
        return cls(
            file_name=name,
            start_step=current.start_step,
            target_step=current.target_step,
            session_start_step=step,
            prior_elapsed=current.elapsed_s,
        )

    def add(self, *, tokens: int, loss: float | None, seconds: float) -> None:
        """One optimizer step: its tokens, its loss (None: skipped or no targets) and its
        training time."""
        self._tokens += tokens
        self._seconds += seconds
        if loss is not None:
            self._loss_sum += loss
            self._loss_steps += 1

    def elapsed(self) -> float:
        return self.prior_elapsed + time.monotonic() - self.started

    def take(self) -> Interval:
        """The steps added since the previous call, and start the next interval."""
        loss = self._loss_sum / self._loss_steps if self._loss_steps else None
        interval = Interval(loss=loss, tokens=self._tokens, seconds=self._seconds)
        self._tokens, self._seconds, self._loss_sum, self._loss_steps = 0, 0.0, 0.0, 0
        return interval

    def line(self, interval: Interval, *, step: int, lr: float) -> str:
        """The console line of ``interval``, which ends at global step ``step``."""
        now = time.monotonic()
        done = step - self.session_start_step
        remaining = self.target_step - step
        eta = (now - self.started) / done * remaining if done > 0 else 0.0
        pct = progress_pct(step, start_step=self.start_step, target_step=self.target_step)
        loss = f"{interval.loss:.4f}" if interval.loss is not None else "n/a"
        return (
            f"step {step}/{self.target_step} ({pct:5.1f}%) {self.file_name} | "
            f"file elapsed {format_duration(self.elapsed())} ETA {format_duration(eta)} | "
            f"{format_rate(interval.tokens_per_s)} | loss {loss} | lr {lr:.2e}"
        )


@dataclass(frozen=True, kw_only=True)
class StepReport:
    """The latest optimizer step, for heartbeats and progress displays."""

    step: int
    """Global step reached."""
    target_step: int
    """The current file's target."""
    loss: float | None
    """Mean loss of the step (None if skipped or without targets)."""
    lr: float
    """Learning rate the step used."""
    tokens_per_s: float
    """Throughput over the recent steps."""
    eta_s: float
    """Seconds to the file's target at the recent pace."""
    seconds: float
    """Wall time of this step."""


def next_report(
    previous: StepReport | None,
    *,
    step: int,
    target_step: int,
    loss: float | None,
    lr: float,
    tokens: int,
    seconds: float,
) -> StepReport:
    """The report of the step just taken, its pace smoothed with ``previous``'s."""
    # Exponential average over ~10 steps: steady enough for an ETA, quick to follow.
    rate = tokens / max(seconds, 1e-9)
    if previous is not None and previous.target_step == target_step:
        rate = 0.9 * previous.tokens_per_s + 0.1 * rate
    step_s = tokens / rate if rate > 0 else seconds
    return StepReport(
        step=step,
        target_step=target_step,
        loss=loss,
        lr=lr,
        tokens_per_s=rate,
        eta_s=step_s * (target_step - step),
        seconds=seconds,
    )


class Scalars:
    """A TensorBoard writer, or nothing when disabled or not installed."""

    def __init__(self, folder: Path | None, *, step: int) -> None:
        self._writer: Any = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "eval.tensorboard is on but TensorBoard is not installed; "
                "pip install 'traind[tensorboard]' (no scalars are written)"
            )
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def step(self, step: int, *, loss: float | None, lr: float, tokens_per_s: float) -> None:
        if self._writer is None:
            return
        if loss is not None:
            self._writer.add_scalar("train/loss", loss, step)
        self._writer.add_scalar("lr", lr, step)
        self._writer.add_scalar("tokens_per_sec", tokens_per_s, step)

    def evaluation(self, step: int, losses: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, loss in losses.items():
            self._writer.add_scalar(f"val/{name}", loss, step)
        # Evaluations are rare; make them visible at once.
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def report_progress(
    meter: ProgressMeter,
    *,
    events: EventLog,
    current: FileProgress,
    step: int,
    lr: float,
    tokens_processed: int,
) -> None:
    """The progress line and the ``progress`` event (what the dashboard plots), both of
    the steps since the file's previous report."""
    interval = meter.take()
    log.info(meter.line(interval, step=step, lr=lr))
    events.emit(
        "progress",
        step=step,
        file=current.name,
        start_step=current.start_step,
        target_step=current.target_step,
        loss=round_loss(interval.loss),
        lr=lr,
        tokens_per_s=round(interval.tokens_per_s, 1),
        tokens_processed=tokens_processed,
    )
