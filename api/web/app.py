"""The FastAPI application of ``traind serve``.

Its lifespan starts the daemon's parts (inbox watcher, supervisor and through it the
worker) and stops them on shutdown, giving the worker its grace time to checkpoint.
The routes are in ``api.web.routes``, ``api.web.routes_files``, ``api.web.routes_settings``,
``api.web.routes_history``, ``api.web.event_stream`` and ``api.web.metrics`` (docs/api.md), what they share in ``api.web.deps``; the bearer token is
resolved here, once, so a bad token file stops the start with its reason.
``/docs`` is Swagger UI served from the package (``api/web/static/swagger-ui``), so it
works on a host without internet; ``/redoc``, which would load its script from a CDN, is off.
``/`` is the web dashboard (``api.web.dashboard``), a page that reads the same routes.
This module never imports torch: everything it shows comes from the ledger and disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.web import uploads
from api.web.auth import resolve_token
from api.web.dashboard import install_dashboard
from api.web.error_handlers import install_error_handlers
from api.web.event_stream import events_router
from api.web.history import EventDigest
from api.web.metrics import metrics_router
from api.web.routes import probes, v1
from api.web.routes_files import files
from api.web.routes_history import history_router
from api.web.routes_settings import settings_router
from api.web.series import SeriesStore
from service.config.settings import Settings
from service.daemon.main_process import Daemon

SWAGGER_UI = Path(__file__).parent / "static" / "swagger-ui"
"""Swagger UI's files, vendored (its README says which version and from where)."""
DOCS_STATIC = "/docs/static"
"""Where ``SWAGGER_UI`` is served."""


def create_app(settings: Settings, *, daemon: Daemon | None = None) -> FastAPI:
    """The app; ``daemon`` is built from the settings unless a test passes its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = daemon or Daemon(settings)
        app.state.daemon = running
        app.state.series.start_reading()  # warm before the first page load asks
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
        docs_url=None,
        redoc_url=None,
    )
    app.state.token = resolve_token(settings)
    uploads.clear_leftovers(uploads.staging_folder(settings), inbox=settings.paths.inbox)
    app.state.digest = EventDigest(settings.run_paths().events)
    app.state.series = SeriesStore(settings.run_paths().events)
    install_error_handlers(app)
    install_docs(app)
    install_dashboard(app)
    app.include_router(probes)
    app.include_router(v1)
    app.include_router(files)
    app.include_router(settings_router)
    app.include_router(history_router)
    app.include_router(events_router(events_path=settings.run_paths().events))
    app.include_router(metrics_router())
    return app


def install_docs(app: FastAPI) -> None:
    """``/docs`` and its OAuth2 redirect, with Swagger UI's files served by the app itself.

    FastAPI's own ``/docs`` loads them from a CDN, which leaves the page blank offline.
    """
    app.mount(DOCS_STATIC, StaticFiles(directory=SWAGGER_UI), name="swagger-ui")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, every URL the page loads needs it back.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon-32x32.png",
            # The online validator's badge would fetch from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
