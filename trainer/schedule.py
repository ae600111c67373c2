"""Learning rate as a pure function of the global step (design rule 2).

Nothing here keeps state: file boundaries, restarts and resumes cannot reset or skip
the schedule because the only input is the global step.
"""

from __future__ import annotations

import math

from trainer.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate for the optimizer step that takes the model from ``step`` to ``step+1``."""
    if step < 0:
        raise ValueError(f"global step cannot be negative, got {step}")
    peak = config.learning_rate
    warmup = config.warmup_steps
    if step < warmup:
        # (step + 1) so the very first update is not wasted at lr 0.
        return peak * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / (step + 1))
    if config.lr_schedule == "cosine":
        floor = peak * config.min_lr_ratio
        progress = min(1.0, (step - warmup) / max(1, config.lr_decay_steps))
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
