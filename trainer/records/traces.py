"""What proves that a checkpoints folder already holds a lineage (ARCHITECTURE.md rule 15).

A lineage is more than its ``step-*`` checkpoints: its gold, its export and the
checkpoints a rollback moved aside belong to it too. When every ``step-*`` checkpoint is
gone or broken, starting a fresh model there would silently begin a new lineage, and its
first gold and export would overwrite the old lineage's. So the trainer refuses (saying
what to do) unless told to start a new lineage, and then it first moves the old
lineage's folders aside, under ``retired/``, never deleting them.

Torch-free: only JSON files and manifests are read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.records.checkpoints import (
    EXPORT_DIR,
    EXPORT_INFO,
    GOLD_DIR,
    RETIRED_DIR,
    ROLLED_BACK_DIR,
    STATE,
    STEP_DIR,
    read_json_object,
)
from trainer.records.storage import fsync_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LineageTraces:
    """The folders of an existing lineage found under a checkpoints root."""

    found: tuple[str, ...]
    """What each one is, for people: ``gold/ (step 120 of lineage 3fa2c1d0)``..."""
    folders: tuple[Path, ...]
    """The folders themselves (what retiring moves aside)."""
    lineage_id: str | None
    """The lineage they belong to, when one of them says."""

    def __bool__(self) -> bool:
        return bool(self.folders)


def lineage_traces(root: Path, *, broken: dict[str, str] | None = None) -> LineageTraces:
    """The traces of a lineage under ``root``; ``broken`` names ``step-*`` folders that
    failed to load, with why (any other ``step-*`` folder counts as a trace too)."""
    found: list[str] = []
    folders: list[Path] = []
    ids: list[str] = []
    if not root.is_dir():
        return LineageTraces(found=(), folders=(), lineage_id=None)
    broken = broken or {}
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if STEP_DIR.match(entry.name):
            why = broken.get(entry.name)
            found.append(f"{entry.name}/" + (f" (not usable: {why})" if why else ""))
            folders.append(entry)
            ids.append(_field(entry / STATE, "lineage_id"))
        elif entry.name == GOLD_DIR:
            state = _json(entry / STATE)
            found.append(f"{GOLD_DIR}/{_described(state, 'global_step')}")
            folders.append(entry)
            ids.append(state.get("lineage_id"))
        elif entry.name == EXPORT_DIR:
            info = _json(entry / EXPORT_INFO)
            found.append(f"{EXPORT_DIR}/{_described(info, 'step')}")
            folders.append(entry)
            ids.append(info.get("lineage_id"))
        elif entry.name == ROLLED_BACK_DIR and any(entry.iterdir()):
            found.append(f"{ROLLED_BACK_DIR}/ (checkpoints a rollback to gold moved aside)")
            folders.append(entry)
    lineage_id = next((i for i in ids if isinstance(i, str) and i), None)
    return LineageTraces(found=tuple(found), folders=tuple(folders), lineage_id=lineage_id)


def refusal(root: Path, traces: LineageTraces, *, expected: str | None) -> str:
    """Why no new lineage is started here, and what to do instead."""
    what = []
    if traces:
        what.append(f"{root} holds " + "; ".join(traces.found))
    if expected:
        what.append(expected)
    return (
        f"{' and '.join(what)}, but there is no usable step-* checkpoint to resume that "
        "lineage from. traind does not start a new lineage over an existing one. To "
        "continue it from its gold checkpoint: `traind train --from gold` (or set "
        'train.on_lost_checkpoints = "gold" to do that by itself); to restore it: put its '
        "step-* checkpoints back from a backup; to start a new lineage anyway: `traind train "
        f"--new-lineage` (the old lineage's folders are moved to {root / RETIRED_DIR}/, "
        "nothing is deleted)"
    )


def retire(root: Path, traces: LineageTraces) -> Path | None:
    """Move a lineage's folders aside, under ``retired/<time>-<lineage>/``; where to."""
    if not traces:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept_in = root / RETIRED_DIR / f"{stamp}-{(traces.lineage_id or 'unknown')[:8]}"
    kept_in.mkdir(parents=True)
    for folder in traces.folders:
        os.rename(folder, kept_in / folder.name)
    fsync_path(kept_in)
    fsync_path(root)
    log.warning(
        "starting a new lineage: the folders of the previous one (%s) are kept in %s",
        ", ".join(f.name for f in traces.folders),
        kept_in,
    )
    return kept_in


def owner(folder: Path) -> str | None:
    """The lineage a gold, step or export folder belongs to (None if it cannot say)."""
    for name in (STATE, EXPORT_INFO):
        lineage = _field(folder / name, "lineage_id")
        if isinstance(lineage, str) and lineage:
            return lineage
    return None


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path) or {}


def _field(path: Path, key: str) -> Any:
    return _json(path).get(key)


def _described(data: dict[str, Any], step_key: str) -> str:
    if not data:
        return " (unreadable)"
    lineage = data.get("lineage_id")
    of = f" of lineage {lineage[:8]}" if isinstance(lineage, str) else ""
    return f" (step {data.get(step_key)}{of})"
