"""The service's state as one dictionary, read from the ledger (for /v1/status), and what
the API's other reports judge from it: whether the worker is ready, the queue's ETA.

``state`` is ``error`` while something needs a person or is being repaired: a worker
that refused its settings (``fatal``), a full disk or a hung worker (the supervisor's
``problem``), or a worker that reports an error (e.g. waiting for disk space). ``error``
then says what, in words a person can act on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.config.sections import BYTES_TOKENIZER
from service.config.settings import Settings
from service.daemon.supervisor import SupervisorStatus
from service.ledger import DesiredState, FileState, Ledger, WorkerState, WorkerStatus

STALE_AFTER_BEATS = 10
"""A worker silent for this many heartbeat intervals is reported as not running."""
BYTES_PER_TOKEN_GUESS = 4.0
"""For the queue ETA with a subword tokenizer (about 4 bytes of English text a token)."""
SCHEMA_RECHECK_S = 30.0
"""How long a passing schema check is trusted before /readyz asks the ledger again."""


def heartbeat_age(worker: WorkerStatus, *, now: datetime) -> float:
    """Seconds since the worker's last heartbeat (a naive time from the ledger is UTC)."""
    beat = worker.heartbeat_at
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    return (now - beat).total_seconds()


def is_fresh(age: float | None, *, heartbeat_s: float) -> bool:
    """Whether a heartbeat that old still says the worker is running."""
    return age is not None and age <= STALE_AFTER_BEATS * heartbeat_s


def worker_not_ready(worker: WorkerStatus | None, *, heartbeat_s: float) -> str | None:
    """Why the worker is not ready to train (for /readyz), or None when it is: a fresh
    heartbeat with the model loaded."""
    if worker is None:
        return "no worker has reported yet"
    age = heartbeat_age(worker, now=datetime.now(UTC))
    if not is_fresh(age, heartbeat_s=heartbeat_s):
        limit = STALE_AFTER_BEATS * heartbeat_s
        return f"the worker's last heartbeat was {age:.1f}s ago (more than {limit:.1f}s)"
    if not worker.model_loaded:
        return f"the worker is {worker.state} and has not loaded the model yet"
    return None


@dataclass(frozen=True, kw_only=True)
class _Seen:
    """What the status makes of the newest heartbeat."""

    worker: WorkerStatus | None
    """The newest heartbeat, if any."""
    age: float | None
    """Its age in seconds."""
    alive: bool
    """Fresh: its live numbers (loss, rate, ETA) are shown."""
    silent: bool
    """Stale, but from the worker the supervisor runs: busy or hung, not gone."""

    @property
    def shown(self) -> bool:
        """Its state and file are shown."""
        return self.alive or self.silent


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
    seen = _see(ledger.worker_status(), heartbeat_s=heartbeat_s, supervisor=supervisor)
    worker, alive = seen.worker, seen.alive
    fatal = fatal or (supervisor.fatal if supervisor else None)
    state = _state(
        control.desired_state,
        worker.state if worker and seen.shown else None,
        stopping=stopping,
        fatal=fatal,
    )
    error = fatal
    if error is None and state != "stopping":
        problem = supervisor.problem if supervisor else None
        if problem:
            state = "error"
        error = problem or _worker_error(seen, hang_timeout_s=hang_timeout_s)
    # A paused worker's last rate and ETA would promise progress that is not being made.
    moving = bool(worker and alive and state != "paused")
    return {
        "state": state,
        "desired_state": control.desired_state.value,
        "global_step": worker.global_step if worker else None,
        "current_file": _current_file(ledger, worker) if worker and seen.shown else None,
        "train_loss": worker.loss if worker and alive else None,
        "lr": worker.lr if worker and alive else None,
        "tokens_per_s": worker.tokens_per_s if moving else None,
        "eta_s": worker.eta_s if moving else None,
        "memory": memory_of(worker) if worker and alive else None,
        "gold": None,
        "queue": {state.value: n for state, n in ledger.counts_by_state().items()},
        "worker": {
            "id": worker.worker_id if worker else None,
            "pid": worker.pid if worker else None,
            "state": worker.state.value if worker else None,
            "model_loaded": bool(worker and worker.model_loaded and alive),
            "heartbeat_age_s": round(seen.age, 3) if seen.age is not None else None,
        },
        "error": error,
    }


MEMORY_FIELDS = (
    "host_rss_bytes",
    "device_allocated_bytes",
    "device_reserved_bytes",
    "device_peak_bytes",
    "estimate_bytes",
)


def memory_of(worker: WorkerStatus) -> dict[str, int | None] | None:
    """The memory the worker measured at its latest heartbeat (trainer.memory_use), or
    None from a worker that does not report it."""
    reported = (worker.extra or {}).get("memory")
    if not isinstance(reported, dict):
        return None
    return {
        name: value if isinstance(value, int) and not isinstance(value, bool) else None
        for name in MEMORY_FIELDS
        for value in (reported.get(name),)
    }


def _see(
    worker: WorkerStatus | None, *, heartbeat_s: float, supervisor: SupervisorStatus | None
) -> _Seen:
    age = heartbeat_age(worker, now=datetime.now(UTC)) if worker else None
    alive = worker is not None and is_fresh(age, heartbeat_s=heartbeat_s)
    # A running worker that stopped reporting is busy (a long checkpoint, evaluation or
    # tokenization) or hung; either way it is not idle.
    silent = (
        not alive
        and worker is not None
        and supervisor is not None
        and supervisor.pid is not None
        and supervisor.pid == worker.pid
    )
    return _Seen(worker=worker, age=age, alive=alive, silent=silent)


def _worker_error(seen: _Seen, *, hang_timeout_s: float | None) -> str | None:
    """What the worker's own report, or its silence, says is wrong (None: nothing)."""
    worker = seen.worker
    if worker is None:
        return None
    if seen.shown and worker.state is WorkerState.ERROR:
        return worker.message or "the worker reported an error; see its log"
    if seen.silent:
        replaced = (
            f" (it is replaced after {hang_timeout_s:g}s without one)" if hang_timeout_s else ""
        )
        return (
            f"no report from the worker (pid {worker.pid}) for {seen.age:.0f}s: a long step, "
            f"evaluation or checkpoint, or a hang{replaced}"
        )
    return None


def _current_file(ledger: Ledger, worker: WorkerStatus) -> dict[str, Any] | None:
    if worker.file_id is None:
        return None
    record = ledger.get_file(worker.file_id)
    start, target, step = worker.start_step, worker.target_step, worker.global_step
    progress = None
    if start is not None and target is not None and step is not None and target > start:
        progress = round(min(1.0, max(0.0, (step - start) / (target - start))), 4)
    return {
        "id": worker.file_id,
        "name": record.name if record else None,
        "start_step": start,
        "target_step": target,
        "progress": progress,
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


def queue_eta(ledger: Ledger, status: dict[str, Any], *, settings: Settings) -> float | None:
    """Seconds until the queue is empty, estimated from a :func:`read_status` dictionary:
    the file in training's ETA, then the queued files' bytes (as tokens) at the current
    rate; 0 when there is nothing to train, None when there is no rate to go by."""
    queued = [r for r in ledger.queue_order() if r.state is FileState.QUEUED]
    if not queued and status["current_file"] is None:
        return 0.0
    rate = status["tokens_per_s"]
    if not rate or rate <= 0:
        return None
    per_token = 1.0 if settings.model.tokenizer == BYTES_TOKENIZER else BYTES_PER_TOKEN_GUESS
    tokens = sum(r.size for r in queued) * settings.train.epochs_per_file / per_token
    current = status["eta_s"] if status["current_file"] is not None else None
    return round((current or 0.0) + tokens / rate, 1)


class SchemaCheck:
    """``Ledger.at_head`` (a migration-table read), remembered while it passes."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._passed_at: float | None = None
        self._lock = threading.Lock()

    def at_head(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._passed_at is not None and now - self._passed_at < SCHEMA_RECHECK_S:
                return True
            ok = self._ledger.at_head()
            self._passed_at = now if ok else None
            return ok
