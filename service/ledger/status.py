"""Ledger queries for what the processes tell each other besides files: the operator's
wishes (control), the worker's heartbeat, and the checkpoints committed.

Part of ``Ledger``; see ``service.ledger.ledger``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from service.ledger.models import CHECKPOINT_KINDS, CheckpointRow, ControlRow, WorkerRow
from service.ledger.records import Control, DesiredState, WorkerState, WorkerStatus
from service.ledger.store import Store, utcnow

log = logging.getLogger(__name__)

_CONTROL_ID = 1


class StatusQueries(Store):
    """Control, worker heartbeats and checkpoints."""

    def get_control(self) -> Control:
        """What the operator wants (``running`` until someone pauses)."""
        with self._reading() as session:
            row = session.get(ControlRow, _CONTROL_ID)
            if row is not None:
                return row.record()
        # The first migration inserts the row; recreate it if someone deleted it by hand.
        return self.set_desired_state(DesiredState.RUNNING)

    def set_desired_state(self, state: DesiredState) -> Control:
        """Ask the worker to run or pause; the worker reads it between steps."""
        desired = DesiredState(state)
        now = utcnow()
        with self._writing() as session:
            self._upsert(
                session,
                ControlRow,
                values={"id": _CONTROL_ID, "desired_state": desired.value, "updated_at": now},
                keys=("id",),
            )
        log.info("desired state: %s", desired)
        return Control(desired_state=desired, updated_at=now)

    def request_checkpoint(self) -> Control:
        """Ask the worker to save a checkpoint at its next optimizer-step boundary."""
        return self._request("checkpoint")

    def request_rollback(self) -> Control:
        """Ask the worker to roll the lineage back to its gold checkpoint."""
        return self._request("rollback")

    def request_export(self) -> Control:
        """Ask the worker to write the export at its next optimizer-step boundary."""
        return self._request("export")

    def request_eval(self) -> Control:
        """Ask the worker to evaluate the model at its next optimizer-step boundary."""
        return self._request("eval")

    def _request(self, what: str) -> Control:
        now = utcnow()
        with self._writing() as session:
            row = session.get(ControlRow, _CONTROL_ID)
            if row is None:
                row = ControlRow(id=_CONTROL_ID, desired_state=DesiredState.RUNNING.value)
                session.add(row)
            setattr(row, f"{what}_requested_at", now)
            row.updated_at = now
            session.flush()
            control = row.record()
        log.info("%s requested", what)
        return control

    def heartbeat(
        self,
        *,
        worker_id: str,
        pid: int,
        state: WorkerState,
        model_loaded: bool,
        started_at: datetime,
        global_step: int | None = None,
        file_id: int | None = None,
        start_step: int | None = None,
        target_step: int | None = None,
        loss: float | None = None,
        lr: float | None = None,
        tokens_per_s: float | None = None,
        eta_s: float | None = None,
        message: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Report the worker's state (one row per worker, replaced on each call)."""
        values = {
            "worker_id": worker_id,
            "pid": pid,
            "state": WorkerState(state).value,
            "model_loaded": model_loaded,
            "global_step": global_step,
            "file_id": file_id,
            "start_step": start_step,
            "target_step": target_step,
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "eta_s": eta_s,
            "message": message,
            "extra": dict(extra or {}),
            "started_at": started_at,
            "heartbeat_at": utcnow(),
        }
        with self._writing() as session:
            self._upsert(session, WorkerRow, values=values, keys=("worker_id",))

    def worker_status(self, *, worker_id: str | None = None) -> WorkerStatus | None:
        """The most recent heartbeat of any worker (or of ``worker_id``), or None if none
        ever reported."""
        query = select(WorkerRow).order_by(WorkerRow.heartbeat_at.desc()).limit(1)
        if worker_id is not None:
            query = query.where(WorkerRow.worker_id == worker_id)
        with self._reading() as session:
            row = session.scalars(query).first()
            return row.record() if row else None

    def prune_workers(self, *, keep: int = 5) -> int:
        """Forget all but the ``keep`` most recent workers' rows; how many were removed."""
        newest = select(WorkerRow.worker_id).order_by(WorkerRow.heartbeat_at.desc()).limit(keep)
        with self._writing() as session:
            kept = list(session.scalars(newest))
            statement = delete(WorkerRow).where(WorkerRow.worker_id.not_in(kept))
            removed = session.execute(statement).rowcount  # type: ignore[attr-defined]
        return int(removed or 0)

    def record_checkpoint(self, *, name: str, kind: str, step: int, path: str) -> None:
        """Note a committed checkpoint folder (recording the same name and step again
        updates it)."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, not {kind!r}")
        values = {"name": name, "kind": kind, "step": step, "path": path, "created_at": utcnow()}
        with self._writing() as session:
            self._upsert(session, CheckpointRow, values=values, keys=("name", "step"))

    def forget_checkpoints(self, names: Iterable[str]) -> int:
        """Drop the records of checkpoint folders that rotation deleted; returns how many."""
        names = list(names)
        if not names:
            return 0
        with self._writing() as session:
            result = session.execute(delete(CheckpointRow).where(CheckpointRow.name.in_(names)))
            return result.rowcount or 0

    def list_checkpoints(self, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded checkpoints by step (then by recording order), optionally of one kind:
        dicts with ``id``, ``name``, ``kind``, ``step``, ``path``, ``created_at``."""
        query = select(CheckpointRow).order_by(CheckpointRow.step, CheckpointRow.id)
        if kind is not None:
            query = query.where(CheckpointRow.kind == kind)
        with self._reading() as session:
            return [row.record() for row in session.scalars(query)]
