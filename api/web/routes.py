"""The control plane's routes besides the files (see ``routes_files``): probes, status,
pause and resume, checkpoints and gold (docs/api.md).

Reads (``GET /v1/...``) are open to loopback clients and need the bearer token from
anywhere else; every ``POST`` needs it (``api.web.auth``). The probes are always open.
Route functions are plain ``def``: FastAPI runs them in its thread pool, so the ledger's
blocking queries never stall the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api.web.deps import READ, WRITE, CurrentSettings, Digest, LedgerDep, Running
from api.web.history import (
    eval_summary,
    forgetting_summary,
    gold_decision,
    list_checkpoints,
    read_export,
    read_gold,
)
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
from service.daemon.status import queue_eta
from service.ledger import DesiredState
from trainer.records.checkpoints import GOLD_DIR, MANIFEST

log = logging.getLogger(__name__)

probes = APIRouter(tags=["probes"])
v1 = APIRouter(prefix="/v1", tags=["control"])


@probes.get("/livez", summary="Liveness: the API process answers", response_model=LivezOut)
def livez() -> LivezOut:
    return LivezOut(status="ok")


@probes.get(
    "/readyz",
    summary="Readiness: ledger, schema, worker with the model loaded, inbox watcher",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: the failing checks"}},
)
def readyz(daemon: Running) -> JSONResponse:
    checks = {name: _check(probe) for name, probe in daemon.readiness_checks().items()}
    ready = all(c["ok"] for c in checks.values())
    body = ReadyOut(status="ready" if ready else "not ready", checks=checks)
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


def _check(probe: Callable[[], str | None]) -> dict[str, Any]:
    """Run one readiness probe: None when it passes, else the reason."""
    try:
        problem = probe()
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


@v1.get(
    "/status",
    summary="State, global step, current file, loss, ETA, gold, forgetting and queue counts",
    response_model=StatusOut,
    dependencies=READ,
    responses=errors(401),
)
def get_status(daemon: Running, digest: Digest) -> dict[str, Any]:
    data = daemon.status()
    data["eta_queue_s"] = queue_eta(daemon.ledger, data, settings=daemon.settings)
    data["last_eval"] = eval_summary(digest.last_eval())
    data["gold"] = read_gold(daemon.settings.paths.checkpoints, history=digest.gold_history())
    data["export"] = read_export(daemon.settings.paths.checkpoints)
    data["forgetting"] = forgetting_summary(digest.last_forgetting())
    return data


@v1.post(
    "/pause",
    summary="Pause: finish the optimizer step, checkpoint, hold the model",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def pause(ledger: LedgerDep) -> ControlOut:
    ledger.set_desired_state(DesiredState.PAUSED)
    return control_out(ledger.get_control())


@v1.post(
    "/resume",
    summary="Resume training at the same step, without reloading the model",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def resume(ledger: LedgerDep) -> ControlOut:
    ledger.set_desired_state(DesiredState.RUNNING)
    return control_out(ledger.get_control())


@v1.post(
    "/checkpoints",
    summary="Save a checkpoint at the next optimizer-step boundary",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def request_checkpoint(ledger: LedgerDep) -> ControlOut:
    return control_out(ledger.request_checkpoint())


@v1.post(
    "/export",
    summary="Write checkpoints/export (half precision, for inference) at the next step boundary",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def request_export(ledger: LedgerDep) -> ControlOut:
    return control_out(ledger.request_export())


@v1.post(
    "/eval",
    summary="Evaluate the model at the next optimizer-step boundary",
    description="The worker scores the eval sets and samples the prompts at its next step "
    "boundary (at once when idle or paused) and writes a normal eval event (trigger "
    '"request"), which can promote gold like any other evaluation.',
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401),
)
def request_eval(ledger: LedgerDep) -> ControlOut:
    return control_out(ledger.request_eval())


@v1.post(
    "/gold/rollback",
    summary="Roll the lineage back to the gold checkpoint",
    description="The worker stops at the next optimizer-step boundary (or acts at once when "
    "idle or paused), continues the lineage from gold's weights, optimizer and step, and "
    "keeps the newer checkpoints under checkpoints/rolled-back/. The file being trained is "
    "cancelled (retry it to train it again); files finished after gold become rolled_back "
    "(POST /v1/files/requeue-rolled-back trains them again). 409 when there is no gold "
    "checkpoint.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ControlOut,
    dependencies=WRITE,
    responses=errors(401, 409),
)
def request_rollback(settings: CurrentSettings, ledger: LedgerDep) -> ControlOut:
    if not (settings.paths.checkpoints / GOLD_DIR / MANIFEST).is_file():
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "there is no gold checkpoint to roll back to yet: gold is written when an "
            "evaluation finds a new best validation loss that passes the guards",
        )
    return control_out(ledger.request_rollback())


@v1.get(
    "/checkpoints",
    summary="The checkpoints on disk: name, kind, step, created",
    response_model=CheckpointsOut,
    dependencies=READ,
    responses=errors(401),
)
def get_checkpoints(settings: CurrentSettings, ledger: LedgerDep) -> dict[str, Any]:
    recorded = ledger.list_checkpoints()
    return {"items": list_checkpoints(settings.paths.checkpoints, recorded=recorded)}


@v1.get(
    "/gold",
    summary="The gold checkpoint and the history of gold decisions",
    response_model=GoldOut,
    dependencies=READ,
    responses=errors(401),
)
def get_gold(settings: CurrentSettings, digest: Digest) -> dict[str, Any]:
    history = digest.gold_history()
    return {
        "gold": read_gold(settings.paths.checkpoints, history=history),
        "history": [gold_decision(event) for event in history],
    }
