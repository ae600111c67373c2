"""The service's state as one dictionary, read from the ledger (for /v1/status)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.ledger import DesiredState, Ledger, WorkerState

STALE_AFTER_BEATS = 10
"""A worker silent for this many heartbeat intervals is reported as not running."""


def read_status(
    ledger: Ledger, *, heartbeat_s: float, stopping: bool = False, fatal: str | None = None
) -> dict[str, Any]:
    control = ledger.get_control()
    worker = ledger.worker_status()
    counts = {state.value: n for state, n in ledger.counts_by_state().items()}
    now = datetime.now(UTC)
    age = (now - worker.heartbeat_at).total_seconds() if worker else None
    alive = worker is not None and age is not None and age <= STALE_AFTER_BEATS * heartbeat_s
    state = _state(
        control.desired_state, worker.state if alive else None, stopping=stopping, fatal=fatal
    )
    current = None
    if alive and worker.file_id is not None:
        record = ledger.get_file(worker.file_id)
        start, target, step = worker.start_step, worker.target_step, worker.global_step
        progress = None
        if start is not None and target is not None and step is not None and target > start:
            progress = round(min(1.0, max(0.0, (step - start) / (target - start))), 4)
        current = {
            "id": worker.file_id,
            "name": record.name if record else None,
            "start_step": start,
            "target_step": target,
            "progress": progress,
        }
    return {
        "state": state,
        "desired_state": control.desired_state.value,
        "global_step": worker.global_step if worker else None,
        "current_file": current,
        "train_loss": worker.loss if alive else None,
        "lr": worker.lr if alive else None,
        "tokens_per_s": worker.tokens_per_s if alive else None,
        "eta_s": worker.eta_s if alive else None,
        "gold": None,
        "queue": counts,
        "worker": {
            "id": worker.worker_id if worker else None,
            "pid": worker.pid if worker else None,
            "state": worker.state.value if worker else None,
            "model_loaded": bool(worker and worker.model_loaded and alive),
            "heartbeat_age_s": round(age, 3) if age is not None else None,
        },
        "error": fatal,
    }


def _state(
    desired: DesiredState, worker: WorkerState | None, *, stopping: bool, fatal: str | None
) -> str:
    if fatal:
        return "error"
    if stopping or worker is WorkerState.STOPPING:
        return "stopping"
    if worker is WorkerState.TRAINING:
        return "training"
    if worker is WorkerState.PAUSED or desired is DesiredState.PAUSED:
        return "paused"
    if worker is WorkerState.ERROR:
        return "error"
    return "idle"
