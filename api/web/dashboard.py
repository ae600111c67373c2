"""The web dashboard: ``GET /`` serves the page, ``/ui/*`` its script and stylesheet.

The page is static HTML with a little JavaScript and no build step
(``api/web/static/dashboard``); everything it shows it reads from the REST API and the
live event stream (``/v1/history``, ``/v1/events``, ``/v1/status``, ``/v1/queue``,
``/v1/gold``), and its actions are the API's POST routes, sent with the token the user
enters (kept in the browser tab's sessionStorage). It loads nothing from outside the
server, and its Content-Security-Policy says so to the browser too: a page that works on
a host without internet, and that an injected file name cannot make talk to anyone else.
Every URL in it is relative, so it works behind a proxy that serves traind under a prefix.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DASHBOARD = Path(__file__).parent / "static" / "dashboard"
"""The page's files."""
ASSETS = "/ui"
"""Where its script and stylesheet are served."""
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
"""Only the server itself, for everything the page loads or sends."""
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def page() -> str:
    """The page's HTML (read once: it is part of the installed package)."""
    return (DASHBOARD / "index.html").read_text(encoding="utf-8")


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` (outside the OpenAPI schema: it is not an API route)."""
    app.mount(ASSETS, StaticFiles(directory=DASHBOARD), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page(), headers=HEADERS)
