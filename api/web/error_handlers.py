"""Error responses: every error body is ``{"detail": "<a sentence a person can act on>"}``.

FastAPI's own shapes (a list of validation errors, "Not Found") are turned into that
one sentence; a refused ledger transition is a 409 (404 for a missing file); anything
unexpected is logged with its traceback and answered with a generic 500, so bad input
can never surface as a 500 but a real bug still does.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.ledger import LedgerError

log = logging.getLogger(__name__)

SHOWN_PROBLEMS = 5
_WHERE = {"query": "query parameter", "path": "path parameter", "header": "header"}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(LedgerError, _ledger_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(
    status_code: int, detail: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == status.HTTP_404_NOT_FOUND and detail == "Not Found":
        detail = f"there is no route {request.url.path}; the routes are listed at /docs"
    elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
    return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_describe(error) for error in exc.errors()]
    detail = "; ".join(problems[:SHOWN_PROBLEMS])
    if len(problems) > SHOWN_PROBLEMS:
        detail += f"; and {len(problems) - SHOWN_PROBLEMS} more"
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, detail or "malformed request")


async def _ledger_error(request: Request, exc: Exception) -> JSONResponse:
    message = str(exc)
    # The routes look a file up before acting on it; this covers one deleted in between.
    code = status.HTTP_404_NOT_FOUND if message.startswith("no file") else status.HTTP_409_CONFLICT
    return error_response(code, message)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        "internal error (a bug in traind); the server log has the details",
    )


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid"))
    if len(loc) >= 2 and loc[0] in _WHERE:
        return f"{_WHERE[loc[0]]} {loc[1]!r}: {message}"
    if loc:
        return f"{'.'.join(loc)}: {message}"
    return message
