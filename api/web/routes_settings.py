"""``GET /v1/settings``: the settings in force in ``traind serve`` (docs/api.md).

They are what the daemon holds (``Daemon.in_force``), changed only by an accepted reload
(SIGHUP, ``service.daemon.reloader``), with their revision and when they were loaded; a
``traind.toml`` edited but not reloaded, or refused, does not show here. Secrets are
redacted (``service.config.reload.redacted``). A read: open to loopback clients, the
bearer token from anywhere else.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.web.deps import READ, Running
from api.web.schemas import SettingsOut, errors
from service.config.reload import redacted

settings_router = APIRouter(prefix="/v1", tags=["control"])


@settings_router.get(
    "/settings",
    summary="The settings in force (secrets redacted), their revision and when they were loaded",
    response_model=SettingsOut,
    dependencies=READ,
    responses=errors(401),
)
def get_settings(daemon: Running) -> SettingsOut:
    in_force = daemon.in_force  # read once: a reload replaces it whole
    config_file = in_force.settings.config_file
    worker = daemon.ledger.worker_status()
    applied = (worker.extra or {}).get("settings_revision") if worker else None
    return SettingsOut(
        revision=in_force.revision,
        loaded_at=in_force.loaded_at,
        worker_revision=applied if isinstance(applied, int) else None,
        config_file=str(config_file) if config_file else None,
        settings=redacted(in_force.settings),
    )
