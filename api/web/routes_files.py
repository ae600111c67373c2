"""The routes about drops: the queue, one file, uploads, retry, cancel, and re-queueing
the files a rollback to gold undid (docs/api.md).

A missing file is a 404 (looked up first); a transition its state forbids is a 409 with
the ledger's reason; an upload over ``watcher.max_file_bytes`` is a 413.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.web import uploads
from api.web.deps import MAX_ID, READ, WRITE, KnownFile, LedgerDep, Running
from api.web.schemas import (
    FileOut,
    QueueOut,
    RetryOut,
    UploadOut,
    errors,
    file_out,
    retry_out,
)
from service.daemon.main_process import Daemon
from service.ledger import FileRecord, FileState

log = logging.getLogger(__name__)

files = APIRouter(prefix="/v1", tags=["files"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file as the multipart field `file`, or as the raw body with "
        "`?name=`. Streamed to disk; at most watcher.max_file_bytes.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@files.get(
    "/queue",
    summary="Files by arrival, optionally filtered by state",
    response_model=QueueOut,
    dependencies=READ,
    responses=errors(401, 422),
)
def get_queue(
    ledger: LedgerDep,
    state: Annotated[
        list[FileState] | None, Query(description="Only files in these states (repeatable).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Files to skip.")] = 0,
) -> dict[str, Any]:
    records, total = ledger.list_files(states=state, limit=limit, offset=offset)
    return {
        "items": [file_out(r) for r in records],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@files.get(
    "/files/{file_id}",
    summary="Everything the ledger knows of one file",
    response_model=FileOut,
    dependencies=READ,
    responses=errors(401, 404, 422),
)
def get_file(record: KnownFile) -> FileOut:
    return file_out(record)


@files.post(
    "/files",
    summary="Upload a drop into the inbox (multipart field `file`)",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadOut,
    dependencies=WRITE,
    responses=errors(401, 413, 422, 507),
    openapi_extra=_UPLOAD_BODY,
)
async def upload(
    request: Request,
    daemon: Running,
    name: Annotated[
        str | None,
        Query(max_length=4096, description="The file's name, for a raw (non-multipart) body."),
    ] = None,
) -> UploadOut | Response:
    settings = daemon.settings
    try:
        staged = await uploads.receive(
            request.stream(),
            content_type=request.headers.get("content-type", ""),
            raw_name=name,
            staging=uploads.staging_folder(settings),
            max_bytes=settings.watcher.max_file_bytes,
        )
    except uploads.UploadError as exc:
        log.info("upload refused: %s", exc.detail)
        raise HTTPException(exc.status, exc.detail) from None
    except ClientDisconnect:
        log.info("the client went away during an upload; nothing was kept")
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    label = uploads.label_for(staged.client_name)
    try:
        placed = await run_in_threadpool(
            uploads.place,
            staged.path,
            inbox=daemon.watcher.inbox,
            label=label,
            gz=uploads.is_gz(staged.client_name),
        )
    finally:
        staged.path.unlink(missing_ok=True)
    return UploadOut(name=placed.name, label=label, bytes=staged.bytes)


@files.post(
    "/files/requeue-rolled-back",
    summary="Queue again every file a rollback to gold undid",
    description="Every rolled_back file goes back to queued, afresh (no steps, no attempts), "
    "and trains again on new global steps. One whose content is queued, training or done "
    "under another record (dropped again) stays rolled_back. Answers the files re-queued "
    "(an empty list when there are none).",
    response_model=list[FileOut],
    dependencies=WRITE,
    responses=errors(401),
)
def requeue_rolled_back(daemon: Running) -> list[FileOut]:
    requeued = daemon.ledger.requeue_rolled_back()
    for record in requeued:
        _note_requeued(daemon, record, request="requeue")
    return [file_out(record) for record in requeued]


@files.post(
    "/files/{file_id}/retry",
    summary="Queue a failed, cancelled or rolled-back file again; re-check a rejected one",
    response_model=RetryOut,
    dependencies=WRITE,
    responses={
        202: {"model": RetryOut, "description": "A rejected file, moved back into the inbox"},
        **errors(401, 404, 409, 422),
    },
)
def retry(daemon: Running, record: KnownFile, response: Response) -> RetryOut:
    if record.state is not FileState.REJECTED:
        retried = daemon.ledger.retry(record.id)
        if record.state is FileState.ROLLED_BACK:
            _note_requeued(daemon, retried, request="retry")
        return retry_out(retried)
    placed = _return_rejected(daemon, record)
    response.status_code = status.HTTP_202_ACCEPTED
    return retry_out(record, requeued_as=placed.name)


def _note_requeued(daemon: Daemon, record: FileRecord, *, request: str) -> None:
    """A file a rollback to gold undid is queued again: the event log says so."""
    daemon.events.emit(
        "file_requeued", id=record.id, file=record.name, sha256=record.sha256, request=request
    )


def _return_rejected(daemon: Daemon, record: FileRecord) -> Path:
    current = Path(record.path)
    layout = daemon.watcher.layout
    gone = HTTPException(
        status.HTTP_409_CONFLICT,
        f"file #{record.id} ({record.name}) is no longer at {current}: it was retried already "
        "or moved by hand; drop the file into the inbox again instead",
    )
    if current.parent != layout.rejected:
        raise gone
    try:
        return uploads.return_to_inbox(current, inbox=layout.root, name=record.name)
    except FileNotFoundError:
        raise gone from None


@files.post(
    "/files/{file_id}/cancel",
    summary="Cancel a queued file, or stop the training one at a step boundary",
    response_model=FileOut,
    dependencies=WRITE,
    responses={
        202: {"model": FileOut, "description": "The training file stops at its next step"},
        **errors(401, 404, 409, 422),
    },
)
def cancel(ledger: LedgerDep, known: KnownFile, response: Response) -> FileOut:
    record = ledger.request_cancel(known.id)
    if record.state is FileState.TRAINING:
        response.status_code = status.HTTP_202_ACCEPTED
    return file_out(record)
