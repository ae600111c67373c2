"""A small client of the REST API of ``traind serve`` (docs/api.md), for the CLI and scripts.

One method per route; each returns the decoded JSON answer, or raises :class:`ApiError`
with the server's ``detail`` sentence (or :class:`ServerUnreachableError` when no answer came
at all, so a caller never shows an httpx traceback)::

    from api.cli.client import ApiClient

    with ApiClient("http://127.0.0.1:8321", token="...") as client:
        print(client.status()["state"])

:func:`discover_url` and :func:`discover_token` find where the server is and which token
it wants, the way the ``traind`` client commands do.

Only httpx here (and the file states of ``trainer.records``): no settings loading at import,
never torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from trainer.records.lifecycle import FileState

if TYPE_CHECKING:
    from service.config.settings import Settings

__all__ = [
    "FILE_STATES",
    "TOKEN_ENV",
    "TOKEN_FILE_NAME",
    "URL_ENV",
    "ApiClient",
    "ApiError",
    "ServerUnreachableError",
    "discover_token",
    "discover_url",
]

URL_ENV = "TRAIND_URL"
TOKEN_ENV = "TRAIND_TOKEN"
TOKEN_FILE_NAME = "api-token"
"""Where ``traind serve`` writes the token it generates: ``<paths.state>/api-token``."""

FILE_STATES = tuple(state.value for state in FileState)
"""The file states of the contract (the ``state`` filter of ``GET /v1/queue``)."""

# Wildcard bind addresses: a server listening on every interface answers on loopback.
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "[::]"})


class ApiError(Exception):
    """The server refused a request (``status`` is its HTTP code, ``detail`` its reason)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ServerUnreachableError(ApiError):
    """No answer at all: nothing listens, the connection broke, or it timed out."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


class ApiClient:
    """The routes of docs/api.md over one httpx connection pool; use it as a context manager."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10) -> None:
        url = base_url.strip().rstrip("/")
        if not re.match(r"^https?://[^/]", url):
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        self.base_url = url
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "traind-client"}
        if token:
            # Sent on reads too: they need it from any address other than loopback.
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- reads ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: state, global step, current file, gold, queue counts."""
        return self._request("GET", "/v1/status")

    def queue(
        self, *, states: Iterable[str] = (), limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """``GET /v1/queue``: ``{"items": [...], "total": n, ...}`` by arrival."""
        params: list[tuple[str, str | int]] = [("state", str(state)) for state in states]
        params += [("limit", limit), ("offset", offset)]
        return self._request("GET", "/v1/queue", params=params)

    def file(self, file_id: int) -> dict[str, Any]:
        """``GET /v1/files/{id}``: everything the ledger knows of one file."""
        return self._request("GET", f"/v1/files/{int(file_id)}")

    def checkpoints(self) -> Any:
        """``GET /v1/checkpoints``: the checkpoints on disk."""
        return self._request("GET", "/v1/checkpoints")

    def gold(self) -> dict[str, Any]:
        """``GET /v1/gold``: the gold checkpoint and its decision history."""
        return self._request("GET", "/v1/gold")

    # -- actions ----------------------------------------------------------------------

    def enqueue(self, path: Path | str) -> dict[str, Any]:
        """``POST /v1/files``: upload a drop; the server answers with the inbox name it chose.

        The file is streamed from disk (httpx reads a file object in chunks), so a large
        drop never sits in memory; its name is only a label for the server.
        """
        source = Path(path)
        with source.open("rb") as handle:
            files = {"file": (source.name, handle, "application/octet-stream")}
            return self._request("POST", "/v1/files", files=files)

    def retry(self, file_id: int) -> dict[str, Any]:
        """``POST /v1/files/{id}/retry``: a failed/cancelled file is queued again, a
        rejected one goes back into the inbox to be checked again."""
        return self._request("POST", f"/v1/files/{int(file_id)}/retry")

    def cancel(self, file_id: int) -> dict[str, Any]:
        """``POST /v1/files/{id}/cancel``: a queued file is cancelled; the file in training
        stops at its next optimizer step with a checkpoint."""
        return self._request("POST", f"/v1/files/{int(file_id)}/cancel")

    def pause(self) -> dict[str, Any]:
        """``POST /v1/pause``: the worker checkpoints at its next step and holds the model."""
        return self._request("POST", "/v1/pause")

    def resume(self) -> dict[str, Any]:
        """``POST /v1/resume``: training continues at the same step."""
        return self._request("POST", "/v1/resume")

    def checkpoint(self) -> dict[str, Any]:
        """``POST /v1/checkpoints``: save a checkpoint at the next optimizer-step boundary."""
        return self._request("POST", "/v1/checkpoints")

    def rollback(self) -> dict[str, Any]:
        """``POST /v1/gold/rollback``: the lineage continues from the gold checkpoint."""
        return self._request("POST", "/v1/gold/rollback")

    def export(self) -> dict[str, Any]:
        """``POST /v1/export``: write checkpoints/export at the next step boundary."""
        return self._request("POST", "/v1/export")

    def evaluate(self) -> dict[str, Any]:
        """``POST /v1/eval``: evaluate the model at the next step boundary."""
        return self._request("POST", "/v1/eval")

    # -- plumbing ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise self._unreachable("connection timed out") from None
            raise ServerUnreachableError(
                f"traind at {self.base_url} did not answer within {self.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise self._unreachable(_transport_reason(exc)) from None
        if not response.is_success:
            raise ApiError(response.status_code, _detail(response))
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            # Something else answers on that port (a proxy's page, another service).
            raise ApiError(
                response.status_code,
                f"{self.base_url}{path} answered with something other than JSON: is it traind?",
            ) from None

    def _unreachable(self, reason: str) -> ServerUnreachableError:
        return ServerUnreachableError(
            f"cannot reach traind at {self.base_url}: is `traind serve` running? ({reason})"
        )

    # -- actions (continued) ------------------------------------------------------------

    def requeue_rolled_back(self) -> list[dict[str, Any]]:
        """``POST /v1/files/requeue-rolled-back``: every file a rollback to gold undid is
        queued again; the files re-queued (empty when there were none)."""
        return self._request("POST", "/v1/files/requeue-rolled-back")


def _transport_reason(exc: httpx.TransportError) -> str:
    """A short lower-case reason: "connection refused", not "[Errno 111] Connection refused"."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed before an answer"
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip())
    return (text[:1].lower() + text[1:]) if text else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    """The sentence the server gave (``{"detail": ...}``), else something a person can read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail.strip():
        return detail.strip()
    if isinstance(detail, list) and detail:
        # FastAPI's validation errors: [{"loc": [...], "msg": "..."}, ...]
        return "; ".join(_validation_problem(problem) for problem in detail)
    text = response.text.strip()
    if text and not text.startswith("<"):
        return text[:300]
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _validation_problem(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
    message = str(problem.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


# -- discovery ----------------------------------------------------------------------------


def discover_url(explicit: str | None = None, *, settings: Callable[[], Settings]) -> str:
    """Where the server is: ``explicit`` (``--url``), else ``$TRAIND_URL``, else
    ``http://<server.host>:<server.port>`` from the settings (loaded only if needed),
    with a wildcard bind address (0.0.0.0, ::) replaced by loopback."""
    for candidate in (explicit, os.environ.get(URL_ENV)):
        if candidate and candidate.strip():
            return candidate.strip().rstrip("/")
    server = settings().server
    host = "127.0.0.1" if server.host.strip() in _ANY_ADDRESS else server.host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{server.port}"


def discover_token(explicit: str | None = None, *, settings: Callable[[], Settings]) -> str | None:
    """The bearer token: ``explicit`` (``--token``), else ``$TRAIND_TOKEN``, else
    ``server.token``, else ``<paths.state>/api-token`` if readable, else None (reads on
    loopback need none)."""
    for candidate in (explicit, os.environ.get(TOKEN_ENV)):
        if candidate and candidate.strip():
            return candidate.strip()
    loaded = settings()
    if loaded.server.token and loaded.server.token.strip():
        # As the server compares it: surrounding whitespace never reaches an HTTP header.
        return loaded.server.token.strip()
    try:
        token = (loaded.paths.state / TOKEN_FILE_NAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None  # no file yet (the server makes it at first start), or not ours to read
    return token or None
