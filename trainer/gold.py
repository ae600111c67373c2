"""The gold checkpoint: the guarded best (ARCHITECTURE.md rule 10).

A new best validation loss (strictly below the current gold's) becomes gold only if

1. the val/train loss ratio is at most the overfit limit,
2. validation did not rise at each of the ``consecutive_rises`` evaluations just before
   this dip (a dip after a climb is more likely noise than recovery), and
3. no eval set is worse than at the current gold by more than the regression threshold,
4. and, with ``gold.forgetting_threshold``, no drop of the forgetting report is worse than
   its own best by more than that (``trainer.forgetting``).

"Best" is measured against the gold, not against blocked candidates: a blocked candidate
is never kept, so the next eval below the gold is a candidate again. A tie is not better.

:func:`decide_gold` is pure so each guard can be tested on scripted sequences; going back
to gold is :mod:`trainer.rollback`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.config import GoldConfig
from trainer.forgetting import forgotten
from trainer.records.checkpoints import GOLD_DIR, ROLLED_BACK_DIR

log = logging.getLogger(__name__)

GOLD = GOLD_DIR
"""Folder name of the gold checkpoint under the checkpoints root."""
ROLLED_BACK = ROLLED_BACK_DIR
"""Folder under the checkpoints root that keeps checkpoints newer than gold after a
rollback (moved, never deleted: a rollback loses nothing)."""


@dataclass(frozen=True, kw_only=True)
class EvalPoint:
    """One evaluation's numbers."""

    step: int
    """Global step of the evaluation."""
    val_loss: float | None
    """Loss of the deciding set (None: nothing to decide on)."""
    train_loss: float | None
    """Mean training loss of the steps since the previous evaluation."""
    sets: dict[str, float]
    """Loss of every evaluated set by name (the deciding set included)."""

    def to_record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "val_loss": self.val_loss,
            "train_loss": self.train_loss,
            "sets": dict(self.sets),
        }


@dataclass(frozen=True, kw_only=True)
class GoldDecision:
    """What to do with one evaluation."""

    candidate: bool
    """The val loss is a new best (below the gold's, or there is no gold yet)."""
    promote: bool
    """Every guard passed: the state at this step becomes gold."""
    guards: tuple[str, ...] = ()
    """Names of the guards that blocked it (``overfit``, ``rising``, ``regression``,
    ``forgetting``)."""
    reason: str | None = None
    """Why it was blocked, naming each guard and its numbers."""


def decide_gold(
    point: EvalPoint,
    *,
    history: Sequence[float | None],
    gold: dict[str, Any] | None,
    config: GoldConfig,
    forgetting: dict[str, Any] | None = None,
) -> GoldDecision:
    """Decide whether ``point`` becomes gold.

    ``history`` holds the val losses of the evaluations before this one, oldest first;
    ``gold`` is the current gold record (``step``, ``val_loss``, ``sets``) or None;
    ``forgetting`` is this evaluation's forgetting report, if any.
    """
    val = point.val_loss
    if val is None or not math.isfinite(val):
        return GoldDecision(candidate=False, promote=False)
    best = gold["val_loss"] if gold else math.inf
    if not val < best:
        return GoldDecision(candidate=False, promote=False)
    blocked: list[tuple[str, str]] = []
    overfit = _overfit(val, point.train_loss, limit=config.overfit_ratio)
    if overfit:
        blocked.append(("overfit", overfit))
    rising = _rising(history, count=config.consecutive_rises)
    if rising:
        blocked.append(("rising", rising))
    for problem in _regressions(point.sets, gold, threshold=config.regression_threshold):
        blocked.append(("regression", problem))
    for problem in forgotten(forgetting, threshold=config.forgetting_threshold):
        blocked.append(("forgetting", problem))
    if not blocked:
        return GoldDecision(candidate=True, promote=True)
    guards = tuple(dict.fromkeys(name for name, _ in blocked))
    return GoldDecision(
        candidate=True,
        promote=False,
        guards=guards,
        reason="; ".join(text for _, text in blocked),
    )


def _overfit(val: float, train: float | None, *, limit: float) -> str | None:
    if train is None or not math.isfinite(train):
        return "overfit: no training loss since the previous evaluation to compare with"
    ratio = math.inf if train <= 0 else val / train
    if ratio <= limit:
        return None
    return (
        f"overfit: val/train loss ratio {ratio:.2f} is above the limit {limit:g} "
        f"(val {val:.4f}, train {train:.4f})"
    )


def _rising(history: Sequence[float | None], *, count: int) -> str | None:
    values = [v for v in history if v is not None]
    recent = values[-(count + 1) :]
    if len(recent) < count + 1:
        return None
    if all(later > earlier for earlier, later in itertools.pairwise(recent)):
        shown = " -> ".join(f"{v:.4f}" for v in recent)
        return (
            f"rising: val loss rose at each of the last {count} evaluations before this dip "
            f"({shown})"
        )
    return None


def _regressions(
    sets: dict[str, float], gold: dict[str, Any] | None, *, threshold: float
) -> list[str]:
    if not gold:
        return []
    problems = []
    for name, loss in sets.items():
        at_gold = (gold.get("sets") or {}).get(name)
        if at_gold is None or at_gold <= 0:
            continue
        worse = loss / at_gold - 1.0
        if worse > threshold:
            problems.append(
                f"regression: eval set {name!r} is {worse:.1%} worse than at gold step "
                f"{gold['step']} ({loss:.4f} vs {at_gold:.4f}, limit {threshold:.0%})"
            )
    return problems
