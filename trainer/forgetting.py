"""The forgetting report: how much worse the model now does on the drops it learned before.

With ``eval.holdout_fraction`` above 0 every drop's held-out part is an eval set of its
own. Each evaluation scores a bounded sample of the finished drops
(``eval.forgetting_drops``: the oldest and the newest always, the rest spread evenly
between; ``eval.forgetting_sequences`` each) and reports per drop the loss now, its best
(the lowest ever measured, kept per drop in the training state, so it survives restarts
with the checkpoint it belongs to) and the increase, ``loss / best - 1``. The ``eval``
event carries the report; the gold guard may block a new best that forgets a drop by
more than ``gold.forgetting_threshold`` (``trainer.gold``).
"""

from __future__ import annotations

from typing import Any

from trainer.records.events import round_loss
from trainer.records.state import CompletedFile, TrainingState

INCREASE_DIGITS = 6
"""Decimals of a reported increase (a fraction: 0.1 is 10% worse than the best)."""


def scored_drops(files: list[CompletedFile], *, count: int) -> list[CompletedFile]:
    """The finished drops with a held-out part that an evaluation scores: all of them up to
    ``count``, else ``count`` spread evenly from the oldest to the newest (both always in)."""
    held = held_out_drops(files)
    if count <= 0 or len(held) <= count:
        return held if count > 0 else []
    last = len(held) - 1
    picks = sorted({round(i * last / (count - 1)) for i in range(count)})
    return [held[i] for i in picks]


def held_out_drops(files: list[CompletedFile]) -> list[CompletedFile]:
    """The finished drops that have a held-out part (what the report samples from)."""
    return [f for f in files if f.n_holdout > 0 and f.holdout_fraction > 0]


def report(
    state: TrainingState,
    losses: dict[str, tuple[float, int]],
    *,
    threshold: float | None,
) -> dict[str, Any] | None:
    """The report of one evaluation at ``state.global_step`` from ``losses`` (per sha256:
    the held-out loss and the sequences scored), the drops' bests updated in ``state``;
    None when no drop was scored."""
    by_sha = {f.sha256: f for f in state.files_completed}
    drops = []
    for sha256, (raw, sequences) in losses.items():
        loss = round_loss(raw)
        done = by_sha.get(sha256)
        if loss is None or done is None:
            continue
        best = state.drop_best.get(sha256)
        if best is None or loss < best["loss"]:
            best = state.drop_best[sha256] = {"loss": loss, "step": state.global_step}
        drops.append(
            {
                "file": done.name,
                "sha256": sha256,
                "end_step": done.end_step,
                "loss": loss,
                "best": best["loss"],
                "best_step": best["step"],
                "increase": _increase(loss, best["loss"]),
                "sequences": sequences,
            }
        )
    if not drops:
        return None
    worst = max(drops, key=lambda d: d["increase"])
    return {
        "drops": drops,
        "worst": dict(worst),
        "measured": len(drops),
        "drops_total": len(held_out_drops(state.files_completed)),
        "threshold": threshold,
    }


def _increase(loss: float, best: float) -> float:
    if best <= 0:
        return 0.0
    return round(max(0.0, loss / best - 1.0), INCREASE_DIGITS)


def forgotten(forgetting: dict[str, Any] | None, *, threshold: float | None) -> list[str]:
    """Why a gold candidate forgets too much: one sentence per drop whose increase is
    above ``threshold`` (none when the guard is off or nothing was measured)."""
    if threshold is None or not forgetting:
        return []
    return [
        f"forgetting: drop {d['file']!r} (finished at step {d['end_step']}) is "
        f"{d['increase']:.1%} worse than its best ({d['loss']:.4f} vs {d['best']:.4f} at "
        f"step {d['best_step']}), limit {threshold:.0%}"
        for d in forgetting["drops"]
        if d["increase"] > threshold
    ]


__all__ = ["forgotten", "held_out_drops", "report", "scored_drops"]
