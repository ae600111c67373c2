"""Model quality in ``GET /metrics``: the newest losses, gold, and how old they are.

Read from the event log (``api.web.history.EventDigest``, incrementally) and the gold
folder at scrape time, so an alert can fire when the model gets worse
(``traind_val_loss`` above ``traind_gold_val_loss``) or stops being evaluated
(``traind_eval_age_seconds`` growing).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from api.web.history import EventDigest, read_gold
from trainer.records.checkpoints import float_or_none, int_or_none

PREFIX = "traind_"


def collect_quality(digest: EventDigest, *, checkpoints: Path, now: datetime) -> Iterator[Metric]:
    """The eval and gold gauges; each only once there is a value to show."""
    losses = digest.set_losses()
    if losses:
        family = GaugeMetricFamily(
            PREFIX + "eval_loss",
            "Newest loss of each eval set (recent: the held-out part of recent drops).",
            labels=["set"],
        )
        for name, (loss, _) in sorted(losses.items()):
            family.add_metric([name], loss)
        yield family
    last = digest.last_eval()
    if last is not None:
        val_loss = float_or_none(last.get("val_loss"))
        if val_loss is not None:
            yield _gauge(
                "val_loss", "Validation loss (the deciding set) of the newest evaluation.", val_loss
            )
        step = int_or_none(last.get("step"))
        if step is not None:
            yield _gauge("eval_step", "Global step of the newest evaluation.", step)
        stamp = _moment(last.get("timestamp"))
        if stamp is not None:
            yield _gauge(
                "eval_age_seconds",
                "Seconds since the newest evaluation of the lineage.",
                max(0.0, (now - stamp).total_seconds()),
            )
    gold = read_gold(checkpoints, history=digest.gold_history())
    if gold is not None:
        if gold["val_loss"] is not None:
            yield _gauge(
                "gold_val_loss", "Validation loss of the gold checkpoint.", gold["val_loss"]
            )
        if gold["step"] is not None:
            yield _gauge("gold_step", "Global step of the gold checkpoint.", gold["step"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
