"""Going back to the gold checkpoint, atomically as seen from outside (ARCHITECTURE.md rule 10).

A rollback is several renames: gold is installed as ``step-<its step>``, then every newer
checkpoint moves under ``rolled-back/``. A crash between two of them must not leave the
lineage on an in-between checkpoint. So before anything moves, the whole plan is written
durably to ``checkpoints/.rollback.json``; every step of it can be done again; and the
plan is deleted only once the lineage has committed a checkpoint at gold that records the
rollback (the request it served, the files it undid). A start that finds the plan
finishes it first. After any crash the lineage is therefore where it was (no plan yet) or
at gold (the plan is finished at the next start), never in between.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.checkpoint import CheckpointError, read_checkpoint
from trainer.checkpointer import Checkpointer
from trainer.faults import fault_point
from trainer.parking import park_current
from trainer.records.checkpoints import GOLD_DIR, ROLLED_BACK_DIR, step_folder, step_folders
from trainer.records.events import EventLog
from trainer.records.manifest import write_json
from trainer.records.staging import staged_folder
from trainer.records.state import FileProgress, TrainingState, newest_training_state
from trainer.records.storage import fsync_path

log = logging.getLogger(__name__)

PLAN = ".rollback.json"
"""The rollback in progress, under the checkpoints root (hidden: not a checkpoint)."""


@dataclass(frozen=True, kw_only=True)
class Rollback:
    """A rollback to gold: what it does, and why."""

    gold_step: int
    """The step the lineage continues from."""
    from_step: int
    """The newest checkpoint's step before the rollback."""
    moved: tuple[str, ...]
    """Checkpoints newer than gold, moved under ``rolled-back/``."""
    kept_in: Path | None
    """Where they were moved (None when there were none)."""
    request: str | None = None
    """The time (ISO) of the operator's request it serves, if one asked."""
    in_progress: dict[str, Any] | None = None
    """The file being trained when it was asked (``name``, ``sha256``), if any."""
    files_undone: tuple[dict[str, Any], ...] = ()
    """Files finished after gold (``name``, ``sha256``, ``start_step``, ``end_step``)."""
    resumed: bool = False
    """True when a start finished a rollback a crash had interrupted."""

    def to_plan(self, root: Path) -> dict[str, Any]:
        return {
            "gold_step": self.gold_step,
            "from_step": self.from_step,
            "moved": list(self.moved),
            "kept_in": self.kept_in.relative_to(root).as_posix() if self.kept_in else None,
            "request": self.request,
            "in_progress": self.in_progress,
            "files_undone": list(self.files_undone),
        }

    @classmethod
    def from_plan(cls, root: Path, plan: dict[str, Any]) -> Rollback:
        return cls(
            gold_step=int(plan["gold_step"]),
            from_step=int(plan["from_step"]),
            moved=tuple(plan.get("moved") or ()),
            kept_in=root / plan["kept_in"] if plan.get("kept_in") else None,
            request=plan.get("request"),
            in_progress=plan.get("in_progress"),
            files_undone=tuple(plan.get("files_undone") or ()),
            resumed=True,
        )


def roll_back_to_gold(
    root: Path, *, request: str | None = None, in_progress: dict[str, Any] | None = None
) -> Rollback:
    """Make gold the lineage's newest checkpoint; call with the lineage lock held.

    The plan is written first, then carried out; :func:`finish_rollback` deletes it once
    the caller has committed the lineage at gold. CheckpointError if gold is unusable
    (then nothing has changed).
    """
    try:
        gold = read_checkpoint(root / GOLD_DIR)
    except CheckpointError as exc:
        raise CheckpointError(f"no usable gold checkpoint to roll back to: {exc}") from exc
    newest = step_folders(root)
    from_step = newest[0][0] if newest else gold.step
    newer = [path for step, path in newest if step > gold.step]
    kept_in = None
    if newer:
        kept_in = root / ROLLED_BACK_DIR / f"from-{from_step:08d}-{uuid.uuid4().hex[:6]}"
    rollback = Rollback(
        gold_step=gold.step,
        from_step=from_step,
        moved=tuple(p.name for p in newer),
        kept_in=kept_in,
        request=request,
        in_progress=in_progress,
        files_undone=_files_undone(root, gold.training_state),
    )
    fault_point("rollback:before_plan")
    _write_plan(root, rollback.to_plan(root))
    _carry_out(root, rollback)
    log.warning(
        "rolled the lineage back to gold at step %d (was at step %d); %d newer checkpoint(s) "
        "kept in %s",
        gold.step,
        from_step,
        len(newer),
        kept_in or "-",
    )
    return rollback


def interrupted_rollback(root: Path) -> Rollback | None:
    """Finish the rollback whose plan a crash left behind; None if there is none."""
    path = root / PLAN
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        rollback = Rollback.from_plan(root, plan)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Written atomically, so unreadable means damaged by hand or by the disk: the
        # checkpoints are as consistent as without it.
        log.error("ignoring the unreadable rollback plan %s (%s)", path, exc)
        path.unlink()
        fsync_path(root)
        return None
    log.warning("finishing the rollback to gold (step %d) that was interrupted", rollback.gold_step)
    _carry_out(root, rollback)
    return rollback


def commit_rollback(rollback: Rollback, *, checkpointer: Checkpointer) -> None:
    """Record the rollback done as the lineage opened, commit the lineage at gold with it,
    and only then call the rollback done (:func:`finish_rollback`)."""
    state, events = checkpointer.state, checkpointer.events
    if record_rollback(rollback, state=state, events=events) is not None:
        # Gold is usually taken mid-file; that file's rest is not trained on its own, as
        # the point of going back is to keep gold's model and move on. Parked, it
        # continues from gold's position if it is retried.
        park_current(
            state, events=events, reason=f"rolled back to gold at step {rollback.gold_step}"
        )
        checkpointer.save(reason="park")
    else:
        checkpointer.save(reason="rollback")
    if checkpointer.group.leader:  # in a torchrun group, rank 0 alone touches the folders
        finish_rollback(checkpointer.root)


def record_rollback(
    rollback: Rollback, *, state: TrainingState, events: EventLog
) -> FileProgress | None:
    """Put the rollback into the lineage's state and the event log
    (``rolled_back_to_gold``); returns the file it abandoned mid-way, if any."""
    abandoned = state.current_file
    if rollback.request is not None:
        state.rollback_served = rollback.request
    undone = {f.get("sha256") for f in state.files_rolled_back}
    state.files_rolled_back += [f for f in rollback.files_undone if f["sha256"] not in undone]
    events.emit(
        "rolled_back_to_gold",
        gold_step=rollback.gold_step,
        from_step=rollback.from_step,
        moved=list(rollback.moved),
        kept_in=str(rollback.kept_in) if rollback.kept_in else None,
        in_progress=abandoned.name if abandoned else None,
        training=(rollback.in_progress or {}).get("name"),
        files_undone=[f["name"] for f in rollback.files_undone],
        resumed=rollback.resumed,
    )
    return abandoned


def finish_rollback(root: Path) -> None:
    """The lineage is committed at gold: the plan is done."""
    fault_point("rollback:before_finish")
    try:
        (root / PLAN).unlink()
    except FileNotFoundError:
        return
    fsync_path(root)


def _carry_out(root: Path, rollback: Rollback) -> None:
    """Install gold as ``step-<its step>``, then move the newer checkpoints aside. Each part
    may have been done already by an interrupted run; doing it again is harmless."""
    gold_dir = root / GOLD_DIR
    target = root / step_folder(rollback.gold_step)
    with staged_folder(target) as stage:
        shutil.copytree(gold_dir, stage.path, dirs_exist_ok=True)
        stage.fsync_files = tuple(entry.name for entry in stage.path.iterdir())
        # Gold's manifest came with the copy: only the folder is left to make durable.
        stage.write_manifest = fsync_path
    fault_point("rollback:after_install")
    newer = [path for step, path in step_folders(root) if step > rollback.gold_step]
    if not newer:
        return
    kept_in = rollback.kept_in or root / ROLLED_BACK_DIR / f"from-{rollback.from_step:08d}"
    kept_in.mkdir(parents=True, exist_ok=True)
    for path in newer:
        os.rename(path, kept_in / path.name)
        fsync_path(kept_in)
        fsync_path(root)
        fault_point("rollback:after_move")


def _write_plan(root: Path, plan: dict[str, Any]) -> None:
    temporary = root / f"{PLAN}.{uuid.uuid4().hex[:8]}.tmp"
    write_json(temporary, plan)
    fsync_path(temporary)
    os.rename(temporary, root / PLAN)
    fsync_path(root)


def _files_undone(root: Path, gold_state: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """Files the newest readable checkpoint finished that gold has not: the rollback
    undoes them on purpose (the ledger marks them ``rolled_back``, not lost)."""
    at_gold = {f.get("sha256") for f in gold_state.get("files_completed") or ()}
    newest = newest_training_state(root) or {}
    return tuple(
        {k: f.get(k) for k in ("name", "sha256", "start_step", "end_step")}
        for f in newest.get("files_completed") or ()
        if f.get("sha256") not in at_gold
    )
