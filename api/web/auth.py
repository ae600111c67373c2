"""The API's bearer token: where it comes from, and the dependencies that check it.

The token is ``server.token`` when set; otherwise one is generated at the first start
into ``<paths.state>/api-token`` (mode 0600) and reused afterwards, so the CLI clients
on the same machine can read it. Every mutating route needs it (:func:`require_token`).
Reads are open to loopback clients and need it from anywhere else
(:func:`require_read_access`); the probes ``/livez`` and ``/readyz`` are always open,
for orchestrators that probe from outside.

A ``server.token`` that is only whitespace is refused, and so is one shorter than
:data:`MIN_PUBLIC_TOKEN_CHARS` when ``server.host`` is not loopback (:func:`check_bind`,
:func:`resolve_token`); ``traind serve`` then exits 2, as for a public bind without one.

uvicorn's default proxy handling trusts ``X-Forwarded-For`` from 127.0.0.1, so a
reverse proxy on the same host that sets it makes remote clients count as remote.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config.settings import Settings

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"
MIN_PUBLIC_TOKEN_CHARS = 16
"""Shortest ``server.token`` (surrounding whitespace aside) for a non-loopback bind."""
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
"""The command the refusals suggest for making a token."""
_bearer = HTTPBearer(
    auto_error=False,
    description="server.token, or the token generated into <paths.state>/api-token.",
)


class BindError(ValueError):
    """The settings would expose the API beyond this machine without a token."""


class TokenError(ValueError):
    """The token file exists but holds no token."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is on the loopback interface."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_bind(settings: Settings) -> None:
    """Refuse a ``server.token`` that guards nothing, and a non-loopback ``server.host``
    without a long one.

    A generated token lives in a file only this machine can read; anyone able to reach a
    public address could not have it, so such a setup would be a mistake either way.
    """
    problem = _token_problem(settings)
    if problem is not None:
        raise BindError(problem)
    host = settings.server.host
    if is_loopback(host) or settings.server.token:
        return
    raise BindError(
        f"server.host is {host!r}, which is reachable from other machines, but server.token "
        f"is not set: set server.token (or TRAIND_SERVER__TOKEN) to a long random secret "
        f"(make one with {MAKE_TOKEN}), or bind to 127.0.0.1"
    )


def resolve_token(settings: Settings) -> str:
    """``server.token`` (without surrounding whitespace), else the token in
    ``<paths.state>/api-token`` (made if missing)."""
    problem = _token_problem(settings)
    if problem is not None:
        raise TokenError(problem)
    if settings.server.token is not None:
        # An HTTP header loses surrounding whitespace: a token kept with it never matches.
        return settings.server.token.strip()
    path = settings.paths.state / TOKEN_FILE
    token = _read_token(path)
    if token is None:
        token = _create_token(path)
    return token


def _token_problem(settings: Settings) -> str | None:
    """Why the configured ``server.token`` cannot be used, or None (also when it is unset)."""
    token = settings.server.token
    if token is None:
        return None
    length = len(token.strip())
    if length == 0:
        return (
            "server.token (or TRAIND_SERVER__TOKEN) is empty or only whitespace, so it would "
            f"guard nothing: set it to a long random secret (make one with {MAKE_TOKEN}), or "
            "remove it to have a token generated into <paths.state>/api-token"
        )
    host = settings.server.host
    if length < MIN_PUBLIC_TOKEN_CHARS and not is_loopback(host):
        characters = "character" if length == 1 else "characters"
        return (
            f"server.token (or TRAIND_SERVER__TOKEN) has only {length} {characters}, too few "
            f"to guard an API that server.host {host!r} makes reachable from other machines: "
            f"use at least {MIN_PUBLIC_TOKEN_CHARS} random characters (make a token with "
            f"{MAKE_TOKEN}), or bind to 127.0.0.1"
        )
    return None


def _read_token(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    token = text.strip()
    if not token:
        raise TokenError(f"the API token file {path} is empty; delete it and a new one is made")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    log.info("API token: %s", path)
    return token


def _create_token(path: Path) -> str:
    """Write a new token atomically with mode 0600; if another process won, use its token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # A link fails if the name exists: two servers starting at once agree on one token.
        os.link(temporary, path)
    except FileExistsError:
        return _read_token(path) or token
    finally:
        temporary.unlink(missing_ok=True)
    log.info("generated an API token in %s (mode 0600); clients read it from there", path)
    return token


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (bytes: compare_digest refuses non-ASCII str)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_token(request: Request, credentials: Credentials) -> None:
    """Dependency of every mutating route: a right bearer token, else 401."""
    _check(request, credentials)


def require_read_access(request: Request, credentials: Credentials) -> None:
    """Dependency of the read routes: open to loopback clients, a token from elsewhere."""
    client = request.client.host if request.client else None
    if is_loopback(client):
        return
    _check(request, credentials)


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    expected: str = request.app.state.token
    if credentials is None:
        detail = (
            "this route needs 'Authorization: Bearer <token>'; the token is server.token or "
            "the contents of <paths.state>/api-token"
        )
    elif not token_matches(credentials.credentials, expected):
        detail = "wrong bearer token; use server.token or the contents of <paths.state>/api-token"
    else:
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )
