"""The FastAPI application of ``traind serve``.

Its lifespan starts the daemon's parts (inbox watcher, supervisor and through it the
worker) and stops them on shutdown, giving the worker its grace time to checkpoint.
The routes are in ``api.web.routes``, ``api.web.routes_files``, ``api.web.event_stream`` and
``api.web.metrics`` (docs/api.md), what they share in ``api.web.deps``; the bearer token is
resolved here, once, so a bad token file stops the start with its reason.
This module never imports torch: everything it shows comes from the ledger and disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.web import uploads
from api.web.auth import resolve_token
from api.web.error_handlers import install_error_handlers
from api.web.event_stream import events_router
from api.web.history import EventDigest
from api.web.metrics import metrics_router
from api.web.routes import probes, v1
from api.web.routes_files import files
from service.config.settings import Settings
from service.daemon.main_process import Daemon


def create_app(settings: Settings, *, daemon: Daemon | None = None) -> FastAPI:
    """The app; ``daemon`` is built from the settings unless a test passes its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = daemon or Daemon(settings)
        app.state.daemon = running
        running.start()
        try:
            yield
        finally:
            # Blocking (the worker may take its grace time to checkpoint): off the loop.
            await run_in_threadpool(running.stop)

    app = FastAPI(
        title="traind",
        summary="Control plane of a continuous-learning daemon for PyTorch language models",
        description="Mutating routes need `Authorization: Bearer <token>`; see docs/api.md.",
        lifespan=lifespan,
    )
    app.state.token = resolve_token(settings)
    uploads.clear_leftovers(uploads.staging_folder(settings), inbox=settings.paths.inbox)
    app.state.digest = EventDigest(settings.run_paths().events)
    install_error_handlers(app)
    app.include_router(probes)
    app.include_router(v1)
    app.include_router(files)
    app.include_router(events_router(events_path=settings.run_paths().events))
    app.include_router(metrics_router())
    return app
