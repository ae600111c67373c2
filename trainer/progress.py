"""The console progress line: step/target, %, elapsed, ETA, tokens/s, loss, lr."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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
    _mark: float = field(default_factory=time.monotonic)
    _tokens: int = 0
    _loss_sum: float = 0.0
    _loss_steps: int = 0

    def add(self, *, tokens: int, loss: float | None) -> None:
        self._tokens += tokens
        if loss is not None:
            self._loss_sum += loss
            self._loss_steps += 1

    def elapsed(self) -> float:
        return self.prior_elapsed + time.monotonic() - self.started

    def line(self, *, step: int, lr: float) -> str:
        now = time.monotonic()
        interval = max(now - self._mark, 1e-9)
        rate = self._tokens / interval
        done = step - self.session_start_step
        remaining = self.target_step - step
        eta = (now - self.started) / done * remaining if done > 0 else 0.0
        pct = progress_pct(step, start_step=self.start_step, target_step=self.target_step)
        loss = f"{self._loss_sum / self._loss_steps:.4f}" if self._loss_steps else "n/a"
        self._mark, self._tokens, self._loss_sum, self._loss_steps = now, 0, 0.0, 0
        return (
            f"step {step}/{self.target_step} ({pct:5.1f}%) {self.file_name} | "
            f"elapsed {format_duration(self.elapsed())} ETA {format_duration(eta)} | "
            f"{format_rate(rate)} | loss {loss} | lr {lr:.2e}"
        )
