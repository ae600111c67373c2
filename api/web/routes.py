"""The control plane's routes besides the files (see ``routes_files``): probes, status,
pause and resume, checkpoints and gold (docs/api.md).

Reads (``GET /v1/...``) are open to loopback clients and need the bearer token from
anywhere else; every ``POST`` needs it (``api.web.auth``). The probes are always open.
Route functions are plain ``def``: FastAPI runs them in its thread pool, so the ledger's
blocking queries never stall the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api.web.auth import require_read_access, require_token
from api.web.history import EventDigest, eval_summary, gold_decision, list_checkpoints, read_gold
from api.web.schemas import (
    CheckpointsOut,
    ControlOut,
    GoldOut,
    LivezOut,
    ReadyOut,
    StatusOut,
    control_out,
    errors,
)
from service.config.sections import BYTES_TOKENIZER
from service.daemon.main_process import Daemon
from service.daemon.status import STALE_AFTER_BEATS
from service.ledger import DesiredState, FileState

log = logging.getLogger(__name__)

SCHEMA_RECHECK_S = 30.0
"""How long a passing schema check is trusted before /readyz asks the ledger again."""
BYTES_PER_TOKEN_GUESS = 4.0
"""For the queue ETA with a subword tokenizer (about 4 bytes of English text a token)."""

READ = [Depends(require_read_access)]
WRITE = [Depends(require_token)]


def daemon_of(request: Request) -> Daemon:
    """Dependency: the running daemon (set by the app's lifespan)."""
    return request.app.state.daemon


Running = Annotated[Daemon, Depends(daemon_of)]

probes = APIRouter(tags=["probes"])
v1 = APIRouter(prefix="/v1", tags=["control"])


class SchemaCheck:
    """``Ledger.at_head`` (a migration-table read), remembered while it passes."""

    def __init__(self) -> None:
        self._passed_at: float | None = None
        self._lock = threading.Lock()

    def at_head(self, daemon: Daemon) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._passed_at is not None and now - self._passed_at < SCHEMA_RECHECK_S:
                return True
            ok = daemon.ledger.at_head()
            self._passed_at = now if ok else None
            return ok


@probes.get("/livez", summary="Liveness: the API process answers", response_model=LivezOut)
def livez() -> LivezOut:
    return LivezOut(status="ok")


@probes.get(
    "/readyz",
    summary="Readiness: ledger, schema, worker with the model loaded, inbox watcher",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: the failing checks"}},
)
def readyz(request: Request, daemon: Running) -> JSONResponse:
    checks = {
        "ledger": _check(_ledger_answers, daemon),
        "schema": _check(_schema_at_head, daemon, request.app.state.schema_check),
        "worker": _check(_worker_ready, daemon),
        "inbox_watcher": _check(_watcher_running, daemon),
        "stopping": _check(_not_stopping, daemon),
    }
    ready = all(c["ok"] for c in checks.values())
    body = ReadyOut(status="ready" if ready else "not ready", checks=checks)
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


def _check(probe: Any, *args: Any) -> dict[str, Any]:
    """Run one readiness probe: None when it passes, else the reason."""
    try:
        problem = probe(*args)
    except Exception as exc:
        log.warning("readiness check %s failed", probe.__name__, exc_info=True)
        problem = _failure(exc)
    return {"ok": problem is None, "detail": problem}


def _failure(exc: Exception) -> str:
    """The public reason for a probe that raised: no message, only the kind of error.

    /readyz answers anyone, and an error's text is internals: a database error carries
    its SQL statement and parameters, a connection error the database's address.
    """
    kind = type(exc).__name__
    if isinstance(exc, SQLAlchemyError):
        return f"the ledger database did not answer ({kind}); see the service log"
    return f"the check failed ({kind}); see the service log"


def _ledger_answers(daemon: Daemon) -> str | None:
    daemon.ledger.counts_by_state()  # a plain read: it raises if the database does not answer
    return None


def _schema_at_head(daemon: Daemon, check: SchemaCheck) -> str | None:
    if check.at_head(daemon):
        return None
    return "the ledger schema is not at this traind's newest migration; run traind migrate"


def _worker_ready(daemon: Daemon) -> str | None:
    worker = daemon.ledger.worker_status()
    if worker is None:
        return "no worker has reported yet"
    age = (datetime.now(UTC) - worker.heartbeat_at).total_seconds()
    limit = STALE_AFTER_BEATS * daemon.settings.worker.heartbeat_s
    if age > limit:
        return f"the worker's last heartbeat was {age:.1f}s ago (more than {limit:.1f}s)"
    if not worker.model_loaded:
        return f"the worker is {worker.state} and has not loaded the model yet"
    return None


def _watcher_running(daemon: Daemon) -> str | None:
    health = daemon.watcher.health()
    return None if health["running"] else "the inbox watcher is not running"


def _not_stopping(daemon: Daemon) -> str | None:
    if daemon.fatal:
        return f"stopping after a fatal error: {daemon.fatal}"
    return "shutting down" if daemon.stopping.is_set() else None


@v1.get(
    "/status",
    summary="State, global step, current file, loss, ETA, gold and queue counts",
    response_model=StatusOut,
    dependencies=READ,
    responses=errors(401),
)
def get_status(request: Request, daemon: Running) -> dict[str, Any]:
    settings = daemon.settings
    data = daemon.status()
    digest: EventDigest = request.app.state.digest
    data["eta_queue_s"] = _queue_eta(daemon, data)
    data["last_eval"] = eval_summary(digest.last_eval())
    data["gold"] = read_gold(settings.paths.checkpoints, history=digest.gold_history())
    return data


def _queue_eta(daemon: Daemon, data: dict[str, Any]) -> float | None:
    """Seconds until the queue is empty, estimated (see StatusOut.eta_queue_s)."""
    queued = [r for r in daemon.ledger.queue_order() if r.state is FileState.QUEUED]
    if not queued and data["current_file"] is None:
        return 0.0
    rate = data["tokens_per_s"]
    if not rate or rate <= 0:
        return None
    settings = daemon.settings
    per_token = 1.0 if settings.model.tokenizer == BYTES_TOKENIZER else BYTES_PER_TOKEN_GUESS
    tokens = sum(r.size for r in queued) * settings.train.epochs_per_file / per_token
    current = data["eta_s"] if data["current_file"] is not None else None
    return round((current or 0.0) + tokens / rate, 1)


@v1.post(
    "/pause",
    summary="Pause: finish the optimizer step, checkpoint, hold the model",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def pause(daemon: Running) -> ControlOut:
    daemon.ledger.set_desired_state(DesiredState.PAUSED)
    return control_out(daemon.ledger.get_control())


@v1.post(
    "/resume",
    summary="Resume training at the same step, without reloading the model",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def resume(daemon: Running) -> ControlOut:
    daemon.ledger.set_desired_state(DesiredState.RUNNING)
    return control_out(daemon.ledger.get_control())


@v1.post(
    "/checkpoints",
    summary="Save a checkpoint at the next optimizer-step boundary",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def request_checkpoint(daemon: Running) -> ControlOut:
    return control_out(daemon.ledger.request_checkpoint())


@v1.post(
    "/export",
    summary="Write checkpoints/export (half precision, for inference) at the next step boundary",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def request_export(daemon: Running) -> ControlOut:
    return control_out(daemon.ledger.request_export())


@v1.post(
    "/gold/rollback",
    summary="Roll the lineage back to the gold checkpoint",
    description="The worker stops at the next optimizer-step boundary (or acts at once when "
    "idle or paused), continues the lineage from gold's weights, optimizer and step, and "
    "keeps the newer checkpoints under checkpoints/rolled-back/. The file being trained is "
    "cancelled (retry it to train it again). 409 when there is no gold checkpoint.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401, 409),
)
def request_rollback(daemon: Running) -> ControlOut:
    gold = daemon.settings.paths.checkpoints / "gold" / "manifest.json"
    if not gold.is_file():
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "there is no gold checkpoint to roll back to yet: gold is written when an "
            "evaluation finds a new best validation loss that passes the guards",
        )
    return control_out(daemon.ledger.request_rollback())


@v1.get(
    "/checkpoints",
    summary="The checkpoints on disk: name, kind, step, created",
    response_model=CheckpointsOut,
    dependencies=READ,
    responses=errors(401),
)
def get_checkpoints(daemon: Running) -> dict[str, Any]:
    recorded = daemon.ledger.list_checkpoints()
    return {"items": list_checkpoints(daemon.settings.paths.checkpoints, recorded=recorded)}


@v1.get(
    "/gold",
    summary="The gold checkpoint and the history of gold decisions",
    response_model=GoldOut,
    dependencies=READ,
    responses=errors(401),
)
def get_gold(request: Request, daemon: Running) -> dict[str, Any]:
    digest: EventDigest = request.app.state.digest
    history = digest.gold_history()
    return {
        "gold": read_gold(daemon.settings.paths.checkpoints, history=history),
        "history": [gold_decision(event) for event in history],
    }
