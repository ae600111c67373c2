"""The FastAPI application of ``traind serve``.

Its lifespan starts the daemon's parts (inbox watcher, supervisor and through it the
worker) and stops them on shutdown, giving the worker its grace time to checkpoint.
This module never imports torch: everything it shows comes from the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.daemon import Daemon
from service.settings import Settings
from service.status import read_status


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
        lifespan=lifespan,
    )

    @app.get("/livez", summary="Liveness: the API process answers")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status", summary="State, global step, current file, queue counts")
    def status() -> dict[str, Any]:
        running: Daemon = app.state.daemon
        return read_status(
            running.ledger,
            heartbeat_s=settings.worker.heartbeat_s,
            stopping=running.stopping.is_set(),
            fatal=running.fatal,
        )

    return app
