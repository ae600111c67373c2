"""The lineage's history as plot series, for ``GET /v1/history`` and the dashboard.

Read from the event log (``<paths.state>/events.jsonl``) incrementally, like
:class:`api.web.history.EventDigest` (both are ``api.web.followed_log.FollowedLog``). Kept in memory at
full resolution, ``array`` columns (steps, values) per series: a request for any step
range is two bisections and, when there are more points than asked for, builtin
``min``/``max``/``sum`` over slices: C speed, without numpy (the API imports none).

The series: ``train_loss``, ``lr`` and ``tokens_per_s`` of the ``progress`` events;
``val_loss`` and each ``eval_<name>`` of the ``eval`` events (a saved checkpoint's
evaluation, trigger ``checkpoint``, is not the lineage's and is left out). The markers:
the files' spans (``file_start`` to ``file_complete``, or to ``file_parked``; a
``file_resumed`` opens a new span), ``gold_checkpoint``, ``gold_blocked`` and
``rolled_back_to_gold``. Non-finite values are not plotted.

Only the lineage's history is kept: a ``rolled_back_to_gold`` drops what came after the
gold step (keeping the rollback's own marker), a ``training_start`` what came after the
step training resumes at (a run that crashed past its last checkpoint trains those steps
again), and ``lineage_retired`` everything. So each series' steps only grow, each step
once.

``last_event_id`` is the number of lines read (1-based line numbers, lines that are not
JSON counted too), the ids of ``GET /v1/events``: a client that loads the history and then
streams ``/v1/events?after=<last_event_id>`` misses nothing and sees nothing twice.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.web.followed_log import FollowedLog, parse_line
from trainer.records.checkpoints import int_or_none
from trainer.records.events import eval_set_losses

log = logging.getLogger(__name__)

PROGRESS_SERIES = {"train_loss": "loss", "lr": "lr", "tokens_per_s": "tokens_per_s"}
"""Series name: the ``progress`` event's field it plots."""
READ_BYTES = 8 << 20
"""Bytes read from the log per read: a cold start reads it whole."""
_WANTED = re.compile(
    rb'"(?:progress|eval|file_(?:start|complete|parked|resumed)|gold_(?:checkpoint|blocked)'
    rb'|rolled_back_to_gold|training_start|lineage_retired)"'
)
"""A cheap test that a line may be of a kind read here: the others are never parsed."""
_PROGRESS_START = b'{"event":"progress",'
_PROGRESS_FIELD = re.compile(rb'"(step|loss|lr|tokens_per_s)":([^,}]*)')
"""The fields of a ``progress`` line plotted here, picked out without parsing the line:
most lines are these, and ``json.loads`` would be most of the time a cold start takes. A
key in quotes cannot occur inside a JSON string (its quotes are escaped there), so in a
line without nested objects each match is the field itself, in whatever order."""
_PROGRESS_KEYS = tuple((name, field.encode()) for name, field in PROGRESS_SERIES.items())


class Series:
    """One plotted quantity: steps, strictly increasing, and their values."""

    __slots__ = ("steps", "values")

    def __init__(self) -> None:
        self.steps = array("q")
        self.values = array("d")

    def add(self, step: int, value: float) -> None:
        """A point; one at or before the last step replaces those from its step on."""
        if self.steps and step <= self.steps[-1]:
            self.cut(step - 1)
        self.steps.append(step)
        self.values.append(value)

    def cut(self, step: int) -> None:
        """Keep only the points at or before ``step``."""
        keep = bisect_right(self.steps, step)
        del self.steps[keep:]
        del self.values[keep:]

    def window(self, *, first: int | None, last: int | None) -> tuple[int, int]:
        """The index range of the points with ``first <= step <= last`` (None: open)."""
        lo = 0 if first is None else bisect_left(self.steps, first)
        hi = len(self.steps) if last is None else bisect_right(self.steps, last)
        return lo, max(lo, hi)


def downsample(series: Series, *, lo: int, hi: int, points: int) -> dict[str, Any]:
    """The points ``lo:hi`` of ``series``, or, if more than ``points``, ``points`` buckets of
    equal point counts, each as the step of its last point, its mean, min and max (so a
    spike stays visible as the envelope)."""
    total = hi - lo
    if total <= points:
        values = series.values[lo:hi].tolist()
        steps = series.steps[lo:hi].tolist()
        return {"step": steps, "value": values, "min": values, "max": values, "total": total}
    steps_of, values_of = series.steps, series.values
    step, mean, low, high = [], [], [], []
    start = lo
    for n in range(1, points + 1):
        end = lo + total * n // points
        chunk = values_of[start:end]
        step.append(steps_of[end - 1])
        mean.append(sum(chunk) / (end - start))
        low.append(min(chunk))
        high.append(max(chunk))
        start = end
    return {"step": step, "value": mean, "min": low, "max": high, "total": total}


@dataclass(frozen=True, kw_only=True)
class Window:
    """A step range (inclusive, None: open) and how many points a series may have in it."""

    first: int | None = None
    last: int | None = None
    points: int = 1000

    def spans(self, start: int, end: int) -> bool:
        """Whether ``[start, end]`` overlaps the window."""
        return (self.first is None or end >= self.first) and (
            self.last is None or start <= self.last
        )


class SeriesStore(FollowedLog):
    """The plot series and markers of the event log at ``path``, kept current. Thread-safe:
    every read first takes what was appended since the previous one."""

    def __init__(self, path: Path, *, read_bytes: int = READ_BYTES) -> None:
        super().__init__(path, read_bytes=read_bytes)

    def _clear(self) -> None:
        self._series: dict[str, Series] = {}
        self._files: list[dict[str, Any]] = []
        self._gold: list[dict[str, Any]] = []
        self._blocked: list[dict[str, Any]] = []
        self._rollbacks: list[dict[str, Any]] = []

    def start_reading(self) -> threading.Thread:
        """Read the log in the background now, so the first request finds it read (one
        that comes sooner waits for it)."""
        thread = threading.Thread(target=self._read_logged, name="history-reader", daemon=True)
        thread.start()
        return thread

    def _read_logged(self) -> None:
        try:
            self.refresh()
        except Exception:
            # The first request reads again and answers with the error.
            log.exception("reading the event log %s for the history failed", self.path)

    def refresh(self) -> int:
        """Take in the lines appended since the previous read; the last line read."""
        with self._lock:
            self._refresh()
            return self._line

    def history(self, window: Window) -> dict[str, Any]:
        """What ``GET /v1/history`` answers for ``window`` (docs/api.md)."""
        with self._lock:
            self._refresh()
            series = {}
            for name, one in self._series.items():
                lo, hi = one.window(first=window.first, last=window.last)
                series[name] = downsample(one, lo=lo, hi=hi, points=window.points)
            return {
                "last_event_id": self._line,
                "from_step": window.first,
                "to_step": window.last,
                "series": series,
                # Copies: a span changes when its file ends, maybe while this is sent.
                "files": [
                    dict(f) for f in self._files if window.spans(f["start_step"], _end_of(f))
                ],
                "gold": [g for g in self._gold if window.spans(g["step"], g["step"])],
                "gold_blocked": [b for b in self._blocked if window.spans(b["step"], b["step"])],
                "rollbacks": [
                    r for r in self._rollbacks if window.spans(r["gold_step"], r["from_step"])
                ],
                "downsampled": any(s["total"] > len(s["step"]) for s in series.values()),
            }

    # ------------------------------------------------------------- reading
    def _take_line(self, raw: bytes, *, line: int) -> None:
        if raw.startswith(_PROGRESS_START) and raw.find(b"{", 1) < 0:
            fields = dict(_PROGRESS_FIELD.findall(raw))
            step = fields.get(b"step", b"")
            if step.isdigit():
                self._progress_fields(int(step), fields)
                return
        if _WANTED.search(raw) is None:
            return
        record = parse_line(raw, line=line)
        if record is None:
            return
        take = _TAKERS.get(record.get("event"))  # type: ignore[arg-type]
        if take is not None:
            take(self, record, line)

    def _series_named(self, name: str) -> Series:
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = Series()
        return series

    def _plot(self, name: str, *, step: int, value: Any) -> None:
        number = _finite(value)
        if number is not None:
            self._series_named(name).add(step, number)

    def _progress(self, record: dict[str, Any], line: int) -> None:
        step = int_or_none(record.get("step"))
        if step is None:
            return
        for name, field in PROGRESS_SERIES.items():
            self._plot(name, step=step, value=record.get(field))

    def _progress_fields(self, step: int, fields: dict[bytes, bytes]) -> None:
        """``_progress`` of a line read without parsing it: its fields' texts by name."""
        for name, key in _PROGRESS_KEYS:
            raw = fields.get(key)
            value = None if raw is None else _number(raw)
            if value is not None:
                self._series_named(name).add(step, value)

    def _eval(self, record: dict[str, Any], line: int) -> None:
        step = int_or_none(record.get("step"))
        if step is None or record.get("trigger") == "checkpoint":
            return
        self._plot("val_loss", step=step, value=record.get("val_loss"))
        for name, loss in eval_set_losses(record).items():
            self._plot(f"eval_{name}", step=step, value=loss)

    def _file_start(self, record: dict[str, Any], line: int) -> None:
        start = int_or_none(record.get("start_step"))
        if start is None:
            return
        # A start written again (a crash came before a checkpoint held it) replaces it.
        self._files = [f for f in self._files if f["start_step"] < start]
        self._open_span(record, start=start, resumed=False)

    def _file_resumed(self, record: dict[str, Any], line: int) -> None:
        start = int_or_none(record.get("step"))
        if start is not None:
            self._open_span(record, start=start, resumed=True)

    def _open_span(self, record: dict[str, Any], *, start: int, resumed: bool) -> None:
        self._files.append(
            {
                "file": _text(record.get("file")),
                "sha256": _text(record.get("sha256")),
                "start_step": start,
                "target_step": int_or_none(record.get("target_step")),
                "end_step": None,
                "outcome": None,
                "resumed": resumed,
            }
        )

    def _file_complete(self, record: dict[str, Any], line: int) -> None:
        self._close_span(record, end=int_or_none(record.get("end_step")), outcome="complete")

    def _file_parked(self, record: dict[str, Any], line: int) -> None:
        self._close_span(record, end=int_or_none(record.get("step")), outcome="parked")

    def _close_span(self, record: dict[str, Any], *, end: int | None, outcome: str) -> None:
        """End the newest open span of the record's file."""
        if end is None:
            return
        sha256 = record.get("sha256")
        for span in reversed(self._files):
            if span["sha256"] == sha256 and span["end_step"] is None:
                span["end_step"], span["outcome"] = end, outcome
                return

    def _gold_checkpoint(self, record: dict[str, Any], line: int) -> None:
        step, loss = int_or_none(record.get("step")), _finite(record.get("val_loss"))
        if step is not None:
            self._gold.append({"id": line, "step": step, "val_loss": loss})

    def _gold_blocked(self, record: dict[str, Any], line: int) -> None:
        step = int_or_none(record.get("step"))
        if step is None:
            return
        guards = record.get("guards")
        self._blocked.append(
            {
                "id": line,
                "step": step,
                "val_loss": _finite(record.get("val_loss")),
                "guards": [str(g) for g in guards] if isinstance(guards, list) else [],
                "reason": _text(record.get("reason")),
            }
        )

    def _rolled_back(self, record: dict[str, Any], line: int) -> None:
        gold_step = int_or_none(record.get("gold_step"))
        if gold_step is None:
            return
        self._cut(gold_step)
        from_step = max(int_or_none(record.get("from_step")) or gold_step, gold_step)
        self._rollbacks.append({"id": line, "gold_step": gold_step, "from_step": from_step})

    def _training_start(self, record: dict[str, Any], line: int) -> None:
        step = int_or_none(record.get("global_step"))
        if step is not None:
            self._cut(step)

    def _retired(self, record: dict[str, Any], line: int) -> None:
        self._clear()

    # ------------------------------------------------------------- the lineage's history
    def _cut(self, step: int) -> None:
        """Forget what came after ``step``: it is no longer the lineage's history."""
        for series in self._series.values():
            series.cut(step)
        self._cut_markers(step)

    def _cut_markers(self, step: int) -> None:
        self._files = [f for f in self._files if f["start_step"] <= step]
        for span in self._files:
            if span["end_step"] is not None and span["end_step"] > step:
                span["end_step"], span["outcome"] = None, None  # in progress again
        self._gold = [g for g in self._gold if g["step"] <= step]
        self._blocked = [b for b in self._blocked if b["step"] <= step]
        self._rollbacks = [r for r in self._rollbacks if r["gold_step"] <= step]


_TAKERS = {
    "progress": SeriesStore._progress,
    "eval": SeriesStore._eval,
    "file_start": SeriesStore._file_start,
    "file_resumed": SeriesStore._file_resumed,
    "file_complete": SeriesStore._file_complete,
    "file_parked": SeriesStore._file_parked,
    "gold_checkpoint": SeriesStore._gold_checkpoint,
    "gold_blocked": SeriesStore._gold_blocked,
    "rolled_back_to_gold": SeriesStore._rolled_back,
    "training_start": SeriesStore._training_start,
    "lineage_retired": SeriesStore._retired,
}
"""What each event kind read here does to the store."""


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool, not ``"inf"``), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _number(raw: bytes) -> float | None:
    """A JSON value's text as a finite float, else None (``null``, ``"inf"``, ``true``)."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _end_of(span: dict[str, Any]) -> int:
    """Where a file's span ends, or is due to end while it is in progress."""
    if span["end_step"] is not None:
        return span["end_step"]
    return max(span["start_step"], span["target_step"] or span["start_step"])
