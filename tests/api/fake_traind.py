"""A fake ``traind serve`` for the client tests: the REST contract of docs/api.md with canned
answers, served by uvicorn in a thread on a free loopback port.

It keeps the client tests independent of the real routes (written in parallel): it
answers like the contract says (status codes, ``{"detail": ...}``, bearer token on POST,
``WWW-Authenticate``), records every request, and can be told to fail the next requests.

    with FakeTraind().serving() as fake:
        httpx.get(f"{fake.url}/v1/status")
"""

from __future__ import annotations

import contextlib
import copy
import email.parser
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

TOKEN = "fake-token-1234"

FILES: dict[int, dict[str, Any]] = {
    1: {
        "name": "day1.jsonl",
        "state": "done",
        "start_step": 0,
        "target_step": 120,
        "end_step": 120,
    },
    2: {"name": "day2.jsonl", "state": "training", "start_step": 120, "target_step": 300},
    3: {"name": "day3.jsonl", "state": "queued"},
    4: {
        "name": "bad.jsonl",
        "state": "rejected",
        "error": "line 3: not valid JSON (Expecting ',' delimiter: line 1 column 12); "
        "fix the line and drop the file again",
    },
    5: {"name": "day4.jsonl", "state": "failed", "error": "the worker died twice on this file"},
    6: {"name": "day5.jsonl", "state": "cancelled", "start_step": 300, "target_step": 360},
}

STATUS: dict[str, Any] = {
    "state": "training",
    "desired_state": "running",
    "global_step": 210,
    "current_file": {
        "id": 2,
        "name": "day2.jsonl",
        "start_step": 120,
        "target_step": 300,
        "progress": 0.5,
    },
    "train_loss": 1.2345,
    "last_eval": {"step": 200, "val_loss": 1.5},
    "lr": 0.0003,
    "tokens_per_s": 12345.6,
    "eta_s": 75,
    "eta_queue_s": 3725,
    "gold": {"step": 200, "val_loss": 1.4321},
    "queue": {
        "queued": 1,
        "training": 1,
        "done": 1,
        "failed": 1,
        "rejected": 1,
        "duplicate": 0,
        "cancelled": 1,
    },
    "worker": {"heartbeat_age_s": 0.4, "model_loaded": True},
    "error": None,
}


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: str
    authorization: str | None


class FakeTraind:
    """The contract's routes over in-memory state; :meth:`reset` between tests."""

    def __init__(self, *, token: str = TOKEN, max_file_bytes: int = 10_000) -> None:
        self.token = token
        self.max_file_bytes = max_file_bytes
        self.url = ""
        self.reset()
        self.app = self._build()

    def reset(self) -> None:
        self.files = copy.deepcopy(FILES)
        self.status = copy.deepcopy(STATUS)
        self.seen: list[Seen] = []
        self.uploads: list[tuple[str | None, bytes]] = []
        self.failures: list[tuple[int, str, str]] = []  # (status, body, media type), in order
        self.reads_need_token = False
        self.delay_s = 0.0

    def fail_next(self, status: int, body: str, *, media_type: str = "text/plain") -> None:
        """Answer the next request with this instead of the route's answer."""
        self.failures.append((status, body, media_type))

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeTraind]:
        with serving(self.app) as url:
            self.url = url
            yield self

    # -- the routes ---------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            self.seen.append(
                Seen(
                    method=request.method,
                    path=request.url.path,
                    query=request.url.query,
                    authorization=request.headers.get("authorization"),
                )
            )
            if self.failures:
                status, body, media_type = self.failures.pop(0)
                return Response(body, status_code=status, media_type=media_type)
            return await call_next(request)

        def bearer(request: Request) -> None:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                raise HTTPException(
                    401,
                    detail="missing or wrong API token",
                    headers={"WWW-Authenticate": "Bearer"},
                )

        def read_access(request: Request) -> None:
            if self.reads_need_token:
                bearer(request)

        def known(file_id: int) -> dict[str, Any]:
            if file_id not in self.files:
                raise HTTPException(
                    404, detail=f"no file #{file_id}; GET /v1/queue lists the files"
                )
            return self.files[file_id]

        def shown(file_id: int) -> dict[str, Any]:
            return {"id": file_id, "error": None, **self.files[file_id]}

        reads = [Depends(read_access)]
        writes = [Depends(bearer)]

        @app.get("/livez")
        def livez() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v1/status", dependencies=reads)
        async def status() -> dict[str, Any]:
            if self.delay_s:
                import asyncio

                await asyncio.sleep(self.delay_s)
            return self.status

        @app.get("/v1/queue", dependencies=reads)
        def queue(
            state: list[str] = Query(default=[]),  # noqa: B008 (FastAPI's idiom)
            limit: int = Query(default=100, ge=1, le=1000),
            offset: int = Query(default=0, ge=0),
        ) -> dict[str, Any]:
            items = [
                shown(i) for i in sorted(self.files) if not state or self.files[i]["state"] in state
            ]
            page = items[offset : offset + limit]
            return {"items": page, "total": len(items), "limit": limit, "offset": offset}

        @app.get("/v1/files/{file_id}", dependencies=reads)
        def file(file_id: int) -> dict[str, Any]:
            known(file_id)
            return {**shown(file_id), "sha256": "ab" * 32, "bad_lines": []}

        @app.post("/v1/files", status_code=202, dependencies=writes)
        async def upload(request: Request) -> dict[str, Any]:
            content_type = request.headers.get("content-type", "")
            raw = await request.body()
            head = f"Content-Type: {content_type}\r\n\r\n".encode()
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
            parts = [
                part
                for part in (message.iter_parts() if message.is_multipart() else ())
                if part.get_param("name", header="content-disposition") == "file"
            ]
            if not parts:
                raise HTTPException(422, detail="the multipart field 'file' is missing")
            label = parts[0].get_filename()
            data = parts[0].get_payload(decode=True)
            if len(data) > self.max_file_bytes:
                raise HTTPException(
                    413,
                    detail=f"the upload is over watcher.max_file_bytes ({self.max_file_bytes} bytes)",
                )
            self.uploads.append((label, data))
            return {
                "name": f"upload-20250101T000000Z-0001--{label}",
                "label": label,
                "bytes": len(data),
            }

        @app.post("/v1/files/{file_id}/retry", dependencies=writes)
        def retry(file_id: int) -> JSONResponse:
            record = known(file_id)
            if record["state"] == "rejected":
                # Like the real route: the record stays rejected, the file goes back to the inbox.
                back = {**shown(file_id), "requeued_as": f"retry-0001--{record['name']}"}
                return JSONResponse(back, status_code=202)
            if record["state"] not in ("failed", "cancelled"):
                raise HTTPException(
                    409,
                    detail=f"file {file_id} is {record['state']}: only failed, cancelled or "
                    "rejected files can be retried",
                )
            record.update(state="queued", error=None)
            return JSONResponse({**shown(file_id), "requeued_as": None})

        @app.post("/v1/files/{file_id}/cancel", dependencies=writes)
        def cancel(file_id: int) -> JSONResponse:
            record = known(file_id)
            if record["state"] == "queued":
                record["state"] = "cancelled"
                return JSONResponse(shown(file_id))
            if record["state"] == "training":
                return JSONResponse(shown(file_id), status_code=202)
            raise HTTPException(
                409, detail=f"file {file_id} is {record['state']}: only queued or training files"
            )

        def control() -> dict[str, Any]:
            return {
                "desired_state": self.status["desired_state"],
                "updated_at": "2025-01-01T00:00:00Z",
                "checkpoint_requested_at": None,
            }

        @app.post("/v1/pause", status_code=202, dependencies=writes)
        def pause() -> dict[str, Any]:
            self.status["desired_state"] = "paused"
            return control()

        @app.post("/v1/resume", status_code=202, dependencies=writes)
        def resume() -> dict[str, Any]:
            self.status["desired_state"] = "running"
            return control()

        @app.post("/v1/checkpoints", status_code=202, dependencies=writes)
        def checkpoint() -> dict[str, Any]:
            return {**control(), "checkpoint_requested_at": "2025-01-01T00:00:01Z"}

        @app.get("/v1/checkpoints", dependencies=reads)
        def checkpoints() -> dict[str, Any]:
            return {"items": [{"name": "step-00000200", "kind": "step", "step": 200}]}

        @app.get("/v1/gold", dependencies=reads)
        def gold() -> dict[str, Any]:
            return {"gold": {"step": 200, "val_loss": 1.4321}, "history": []}

        return app


@contextlib.contextmanager
def serving(
    app: FastAPI, *, lifespan: str = "off", sock: socket.socket | None = None
) -> Iterator[str]:
    """Serve ``app`` in a thread on ``sock`` (a bound socket: its port can go into settings
    before the app is made), else on a free loopback port; yield its base URL."""
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan=lifespan, ws="none", timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-traind", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            sock.close()
            raise RuntimeError("the app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
