"""What the routes share, as FastAPI dependencies: who may call them, the running daemon
and what hangs off it (settings, ledger, the event log's digest), and a file by its id.

The app's lifespan sets ``app.state.daemon``; ``create_app`` sets ``app.state.digest``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from api.web.auth import require_read_access, require_token
from api.web.history import EventDigest
from service.config.settings import Settings
from service.daemon.main_process import Daemon
from service.ledger import FileRecord, Ledger


def wake_worker(request: Request) -> Iterator[None]:
    """After a request that changed something (only when its route succeeded: an error
    raised there ends this at its ``yield``), an idle or paused worker looks at the ledger
    at once rather than at its next poll."""
    yield
    wake = getattr(getattr(request.app.state, "daemon", None), "wake_worker", None)
    if wake is not None:  # a test's stand-in daemon may have none
        wake()


READ = [Depends(require_read_access)]
"""Reads: open to loopback clients, the bearer token from anywhere else."""
WRITE = [Depends(require_token), Depends(wake_worker)]
"""Everything that changes something: the bearer token, always; then the worker woken."""

MAX_ID = 2**63 - 1
"""Largest id the database can hold; a larger one is a 422, not an overflow."""


def daemon_of(request: Request) -> Daemon:
    """The running daemon (set by the app's lifespan)."""
    return request.app.state.daemon


Running = Annotated[Daemon, Depends(daemon_of)]


def settings_of(daemon: Running) -> Settings:
    return daemon.settings


def ledger_of(daemon: Running) -> Ledger:
    return daemon.ledger


def digest_of(request: Request) -> EventDigest:
    """The eval and gold decisions of the event log, read incrementally (one per app)."""
    return request.app.state.digest


CurrentSettings = Annotated[Settings, Depends(settings_of)]
LedgerDep = Annotated[Ledger, Depends(ledger_of)]
Digest = Annotated[EventDigest, Depends(digest_of)]

FileId = Annotated[int, Path(ge=1, le=MAX_ID, description="Ledger id of the file.")]


def known_file(ledger: LedgerDep, file_id: FileId) -> FileRecord:
    """The ledger's record of ``file_id``; 404 if there is none."""
    record = ledger.get_file(file_id)
    if record is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no file #{file_id}; GET /v1/queue lists the files"
        )
    return record


KnownFile = Annotated[FileRecord, Depends(known_file)]
