"""What the API reads from disk rather than the ledger: the eval and gold decisions in
``<paths.state>/events.jsonl`` (with the newest forgetting report), the gold checkpoint,
and the checkpoint folders.

:class:`EventDigest` follows the event log incrementally (``api.web.followed_log``).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from api.web.followed_log import FollowedLog, parse_line
from trainer.records.checkpoints import (
    EXPORT_DIR,
    EXPORT_INFO,
    GOLD_DIR,
    MANIFEST,
    Kind,
    float_or_none,
    int_or_none,
    kind_of,
    read_json_object,
    step_of,
)
from trainer.records.events import FORGETTING, eval_set_losses
from trainer.records.state import read_training_state

log = logging.getLogger(__name__)

GOLD_EVENTS = ("gold_checkpoint", "gold_blocked")
HISTORY_KEPT = 1000
"""Gold decisions kept in memory (the newest)."""
KIND_ORDER = {kind: n for n, kind in enumerate(get_args(Kind))}
"""step-*, then gold, then export."""
_COMMON = ("event", "timestamp", "step", "val_loss", "reason")


class EventDigest(FollowedLog):
    """The newest ``eval`` event, each eval set's newest loss, the newest ``eval`` event
    with a forgetting report, and the gold decisions of the event log, kept current.
    Evaluations of a saved checkpoint (``traind eval --checkpoint``, trigger
    ``checkpoint``) are not the lineage's, and are left out."""

    def __init__(self, path: Path, *, keep: int = HISTORY_KEPT) -> None:
        self._keep = keep
        super().__init__(path)

    def _clear(self) -> None:
        self._last_eval: dict[str, Any] | None = None
        self._last_forgetting: dict[str, Any] | None = None
        self._set_losses: dict[str, tuple[float, int | None]] = {}
        self._gold: deque[dict[str, Any]] = deque(maxlen=self._keep)

    def last_eval(self) -> dict[str, Any] | None:
        """The newest ``eval`` event, or None."""
        with self._lock:
            self._refresh()
            return self._last_eval

    def last_forgetting(self) -> dict[str, Any] | None:
        """The newest ``eval`` event with a forgetting report (one that names its worst
        drop), or None: evaluations that measured no past drop carry none."""
        with self._lock:
            self._refresh()
            return self._last_forgetting

    def set_losses(self) -> dict[str, tuple[float, int | None]]:
        """Each eval set's newest loss and the step it was scored at, by set name."""
        with self._lock:
            self._refresh()
            return dict(self._set_losses)

    def gold_history(self) -> list[dict[str, Any]]:
        """The ``gold_checkpoint`` / ``gold_blocked`` events, oldest first, each with ``id``
        (its 1-based line number)."""
        with self._lock:
            self._refresh()
            return list(self._gold)

    def _take_line(self, raw: bytes, *, line: int) -> None:
        # Most lines are neither: skip them without parsing.
        if b'"eval"' not in raw and b'"gold_' not in raw:
            return
        event = parse_line(raw, line=line)
        if event is None:
            return
        kind = event.get("event")
        if kind == "eval" and event.get("trigger") != "checkpoint":
            self._last_eval = event
            if forgetting_summary(event) is not None:
                self._last_forgetting = event
            step = int_or_none(event.get("step"))
            for name, loss in eval_set_losses(event).items():
                value = float_or_none(loss)
                if value is not None:
                    self._set_losses[str(name)] = (value, step)
        elif kind in GOLD_EVENTS:
            self._gold.append({**event, "id": line})


def eval_summary(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``last_eval`` of /v1/status from an eval event."""
    if event is None:
        return None
    return {
        "step": int_or_none(event.get("step")),
        "val_loss": float_or_none(event.get("val_loss")),
        "timestamp": event.get("timestamp"),
        "sets": {str(k): float_or_none(v) for k, v in eval_set_losses(event).items()},
        "samples": samples_of(event),
    }


def samples_of(event: dict[str, Any]) -> list[dict[str, str]]:
    """The eval event's prompt samples; malformed entries (a hand-edited log) left out."""
    samples = event.get("samples")
    if not isinstance(samples, list):
        return []
    return [
        {"prompt": s["prompt"], "completion": s["completion"]}
        for s in samples
        if isinstance(s, dict)
        and isinstance(s.get("prompt"), str)
        and isinstance(s.get("completion"), str)
    ]


def forgetting_summary(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``forgetting`` of /v1/status from an eval event: its step, the worst drop, how
    many drops were measured of how many, and the threshold; None without a report."""
    if event is None or not isinstance(event.get(FORGETTING), dict):
        return None
    report = event[FORGETTING]
    worst = _worst_drop(report)
    if worst is None:
        return None
    return {
        "step": int_or_none(event.get("step")),
        "worst": worst,
        "measured": int_or_none(report.get("measured")),
        "drops_total": int_or_none(report.get("drops_total")),
        "threshold": float_or_none(report.get("threshold")),
    }


def _worst_drop(report: dict[str, Any]) -> dict[str, Any] | None:
    """The report's ``worst`` drop, or else the listed drop that rose the most."""
    worst = report.get("worst")
    if not isinstance(worst, dict):
        drops = [d for d in report.get("drops") or () if isinstance(d, dict)]
        rose = [d for d in drops if float_or_none(d.get("increase")) is not None]
        if not rose:
            return None
        worst = max(rose, key=lambda d: float(d["increase"]))
    return {
        "file": worst.get("file") if isinstance(worst.get("file"), str) else None,
        "sha256": worst.get("sha256") if isinstance(worst.get("sha256"), str) else None,
        "end_step": int_or_none(worst.get("end_step")),
        "loss": float_or_none(worst.get("loss")),
        "best": float_or_none(worst.get("best")),
        "best_step": int_or_none(worst.get("best_step")),
        "increase": float_or_none(worst.get("increase")),
        "sequences": int_or_none(worst.get("sequences")),
    }


def read_export(checkpoints: Path) -> dict[str, Any] | None:
    """Where ``checkpoints/export`` came from (its ``export.json``), or None without one."""
    folder = checkpoints / EXPORT_DIR
    info = read_json_object(folder / EXPORT_INFO)
    if info is None:
        return None
    return {
        "path": str(folder),
        "from": info.get("from"),
        "source_checkpoint": info.get("source_checkpoint"),
        "step": int_or_none(info.get("step")),
        "lineage_id": info.get("lineage_id"),
        "reason": info.get("reason"),
        "dtype": info.get("dtype"),
        "created_at": info.get("created_at"),
        "complete": (folder / MANIFEST).is_file(),
    }


def gold_decision(event: dict[str, Any]) -> dict[str, Any]:
    """One entry of /v1/gold's history."""
    return {
        "id": event["id"],
        "event": event["event"],
        "timestamp": event.get("timestamp"),
        "step": int_or_none(event.get("step")),
        "val_loss": float_or_none(event.get("val_loss")),
        "reason": event.get("reason"),
        "details": {k: v for k, v in event.items() if k not in (*_COMMON, "id")},
    }


def read_gold(checkpoints: Path, *, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gold checkpoint's step and validation loss, or None if there is none.

    The step comes from ``gold/training_state.json``; the loss from its gold record if
    there is one, else from the newest ``gold_checkpoint`` event at that step.
    """
    state = read_training_state(checkpoints / GOLD_DIR)
    if state is None:
        return None
    step = int_or_none(state.get("global_step"))
    record = state.get("gold")
    val_loss = float_or_none(record.get("val_loss")) if isinstance(record, dict) else None
    if val_loss is None:
        for event in reversed(history):
            if event["event"] == "gold_checkpoint" and int_or_none(event.get("step")) == step:
                val_loss = float_or_none(event.get("val_loss"))
                break
    return {"step": step, "val_loss": val_loss}


def list_checkpoints(root: Path, *, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoint folders under ``root`` (step-*, gold, export), joined with the
    ledger's records of them, by kind then step."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in recorded:
        by_name.setdefault(row["name"], []).append(row)
    found = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        kind = kind_of(entry.name)
        if kind is None or not entry.is_dir(follow_symlinks=False):
            continue
        found.append(_describe(Path(entry.path), kind=kind, rows=by_name.get(entry.name, [])))
    found.sort(key=lambda c: (KIND_ORDER[c["kind"]], c["step"] is None, c["step"] or 0))
    return found


def _describe(folder: Path, *, kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = read_json_object(folder / MANIFEST)
    if kind == "step":
        step = step_of(folder.name)
    else:
        # gold holds a training state; export only its export.json
        state = read_training_state(folder) or read_json_object(folder / EXPORT_INFO) or {}
        step = int_or_none(state.get("global_step", state.get("step")))
    newest = max(rows, key=lambda r: r["step"]) if rows else None
    match = next((r for r in rows if r["step"] == step), None) if step is not None else newest
    if step is None and match is not None:
        step = match["step"]
    return {
        "name": folder.name,
        "kind": kind,
        "step": step,
        "created_at": _created(folder, manifest=manifest, row=match),
        "path": str(folder),
        "complete": manifest is not None,
        "recorded": match is not None,
    }


def _created(
    folder: Path, *, manifest: dict[str, Any] | None, row: dict[str, Any] | None
) -> datetime | None:
    stamp = manifest.get("created_at") if manifest else None
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp)
        except ValueError:
            pass
    if row is not None:
        return row["created_at"]
    try:
        return datetime.fromtimestamp(folder.stat().st_mtime, UTC)
    except OSError:
        return None
