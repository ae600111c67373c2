"""What the API reads from disk rather than the ledger: the eval and gold decisions in
``<paths.state>/events.jsonl``, the gold checkpoint, and the checkpoint folders.

The event log only grows, and may grow large over months of training, so
:class:`EventDigest` reads it incrementally: each refresh reads only the lines appended
since the last one (from the start again if the file was replaced or truncated).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GOLD_EVENTS = ("gold_checkpoint", "gold_blocked")
HISTORY_KEPT = 1000
"""Gold decisions kept in memory (the newest)."""
STEP_DIR = re.compile(r"step-(\d+)")
KIND_ORDER = {"step": 0, "gold": 1, "export": 2}
_COMMON = ("event", "timestamp", "step", "val_loss", "reason")


class EventDigest:
    """The newest ``eval`` event and the gold decisions of the event log, kept current."""

    def __init__(self, path: Path, *, keep: int = HISTORY_KEPT) -> None:
        self.path = path
        self._keep = keep
        self._lock = threading.Lock()
        self._reset(inode=None)

    def _reset(self, *, inode: int | None) -> None:
        self._inode = inode
        self._offset = 0
        self._line = 0
        self._last_eval: dict[str, Any] | None = None
        self._gold: deque[dict[str, Any]] = deque(maxlen=self._keep)

    def last_eval(self) -> dict[str, Any] | None:
        """The newest ``eval`` event, or None."""
        with self._lock:
            self._refresh()
            return self._last_eval

    def gold_history(self) -> list[dict[str, Any]]:
        """The ``gold_checkpoint`` / ``gold_blocked`` events, oldest first, each with ``id``
        (its 1-based line number)."""
        with self._lock:
            self._refresh()
            return list(self._gold)

    def _refresh(self) -> None:
        try:
            found = self.path.stat()
        except FileNotFoundError:
            self._reset(inode=None)
            return
        if found.st_ino != self._inode or found.st_size < self._offset:
            self._reset(inode=found.st_ino)
        if found.st_size == self._offset:
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a line still being written: read it next time
                self._offset += len(raw)
                self._line += 1
                # Most lines are neither: skip them without parsing.
                if b'"eval"' in raw or b'"gold_' in raw:
                    self._take(raw, line=self._line)

    def _take(self, raw: bytes, *, line: int) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            log.debug("events.jsonl line %d is not JSON; skipped", line)
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "eval":
            self._last_eval = event
        elif kind in GOLD_EVENTS:
            self._gold.append({**event, "id": line})


def eval_summary(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``last_eval`` of /v1/status from an eval event."""
    if event is None:
        return None
    sets = (
        event.get("sets")
        or event.get("eval_sets")
        or {
            key.removeprefix("eval_"): value
            for key, value in event.items()
            if key.startswith("eval_") and key != "eval_duration_s"
        }
    )
    return {
        "step": _int(event.get("step")),
        "val_loss": _float(event.get("val_loss")),
        "timestamp": event.get("timestamp"),
        "sets": {str(k): _float(v) for k, v in sets.items()} if isinstance(sets, dict) else {},
    }


def gold_decision(event: dict[str, Any]) -> dict[str, Any]:
    """One entry of /v1/gold's history."""
    return {
        "id": event["id"],
        "event": event["event"],
        "timestamp": event.get("timestamp"),
        "step": _int(event.get("step")),
        "val_loss": _float(event.get("val_loss")),
        "reason": event.get("reason"),
        "details": {k: v for k, v in event.items() if k not in (*_COMMON, "id")},
    }


def read_gold(checkpoints: Path, *, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gold checkpoint's step and validation loss, or None if there is none.

    The step comes from ``gold/training_state.json``; the loss from there if recorded,
    else from the newest ``gold_checkpoint`` event at that step.
    """
    state = _read_json(checkpoints / "gold" / "training_state.json")
    if state is None:
        return None
    step = _int(state.get("global_step"))
    nested = state.get("gold")
    val_loss = _float(state.get("val_loss"))
    if val_loss is None and isinstance(nested, dict):
        val_loss = _float(nested.get("val_loss"))
    if val_loss is None:
        for event in reversed(history):
            if event["event"] == "gold_checkpoint" and _int(event.get("step")) == step:
                val_loss = _float(event.get("val_loss"))
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
        kind = _kind(entry.name)
        if kind is None or not entry.is_dir(follow_symlinks=False):
            continue
        found.append(_describe(Path(entry.path), kind=kind, rows=by_name.get(entry.name, [])))
    found.sort(key=lambda c: (KIND_ORDER[c["kind"]], c["step"] is None, c["step"] or 0))
    return found


def _describe(folder: Path, *, kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = _read_json(folder / "manifest.json")
    if kind == "step":
        step = int(STEP_DIR.fullmatch(folder.name).group(1))  # type: ignore[union-attr]
    else:
        # gold holds a training state; export only its export.json
        state = _read_json(folder / "training_state.json") or _read_json(folder / "export.json")
        state = state or {}
        step = _int(state.get("global_step", state.get("step")))
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


def _kind(name: str) -> str | None:
    if name in ("gold", "export"):
        return name
    return "step" if STEP_DIR.fullmatch(name) else None


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
