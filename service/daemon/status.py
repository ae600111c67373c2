"""The service's state as one dictionary, read from the ledger (for /v1/status).

``state`` is ``error`` while something needs a person or is being repaired: a worker
that refused its settings (``fatal``), a full disk or a hung worker (the supervisor's
``problem``), or a worker that reports an error (e.g. waiting for disk space). ``error``
then says what, in words a person can act on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.daemon.supervisor import SupervisorStatus
from service.ledger import DesiredState, Ledger, WorkerState

STALE_AFTER_BEATS = 10
"""A worker silent for this many heartbeat intervals is reported as not running."""


def read_status(
    ledger: Ledger,
    *,
    heartbeat_s: float,
    stopping: bool = False,
    fatal: str | None = None,
    supervisor: SupervisorStatus | None = None,
    hang_timeout_s: float | None = None,
) -> dict[str, Any]:
    control = ledger.get_control()
    worker = ledger.worker_status()
    counts = {state.value: n for state, n in ledger.counts_by_state().items()}
    now = datetime.now(UTC)
    age = (now - worker.heartbeat_at).total_seconds() if worker else None
    alive = worker is not None and age is not None and age <= STALE_AFTER_BEATS * heartbeat_s
    # A running worker that stopped reporting is busy (a long checkpoint, evaluation or
    # tokenization) or hung; either way it is not idle.
    silent = (
        not alive
        and worker is not None
        and supervisor is not None
        and supervisor.pid is not None
        and supervisor.pid == worker.pid
    )
    shown = alive or silent
    fatal = fatal or (supervisor.fatal if supervisor else None)
    state = _state(
        control.desired_state, worker.state if shown else None, stopping=stopping, fatal=fatal
    )
    error = fatal
    problem = supervisor.problem if supervisor else None
    if error is None and state != "stopping":
        if problem:
            state, error = "error", problem
        elif shown and worker.state is WorkerState.ERROR:
            error = worker.message or "the worker reported an error; see its log"
        elif silent:
            error = (
                f"no report from the worker (pid {worker.pid}) for {age:.0f}s: a long step, "
                "evaluation or checkpoint, or a hang"
                + (
                    f" (it is replaced after {hang_timeout_s:g}s without one)"
                    if hang_timeout_s
                    else ""
                )
            )
    current = None
    if shown and worker.file_id is not None:
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
        "error": error,
    }


def _state(
    desired: DesiredState, worker: WorkerState | None, *, stopping: bool, fatal: str | None
) -> str:
    if fatal:
        return "error"
    if stopping or worker is WorkerState.STOPPING:
        return "stopping"
    if worker is WorkerState.ERROR:
        return "error"
    if worker is WorkerState.TRAINING:
        return "training"
    if worker is WorkerState.PAUSED or desired is DesiredState.PAUSED:
        return "paused"
    return "idle"
