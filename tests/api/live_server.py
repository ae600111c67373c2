"""The real traind app served by uvicorn in a thread on a free loopback port.

``create_app`` with a ``Daemon`` that starts no worker (no torch), on temporary folders:
the tests talk HTTP to it and write the ledger and the event log behind its back, as the
worker would.

    with live_traind(tmp_path) as live:
        httpx.get(f"{live.url}/metrics")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.web.app import create_app
from api.web.event_stream import close_event_streams
from service.config.settings import Settings, load_settings
from service.daemon.main_process import Daemon

TOKEN = "live-test-token-0123456789"


@dataclass(frozen=True, kw_only=True)
class Live:
    url: str
    app: FastAPI
    server: uvicorn.Server
    settings: Settings
    daemon: Daemon | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


def traind_settings(root: Path, *, port: int, **sections: Any) -> Settings:
    """Settings on folders under ``root`` with an explicit token."""
    paths = {
        "inbox": root / "data_inbox",
        "checkpoints": root / "checkpoints",
        "state": root / "state",
    }
    server = {"port": port, "token": TOKEN}
    return load_settings(None, paths=paths, server=server, **sections)


@contextlib.contextmanager
def live_traind(root: Path, **sections: Any) -> Iterator[Live]:
    """``create_app(settings, daemon=Daemon(settings, start_worker=False))``, served."""
    with bound_socket() as sock:
        settings = traind_settings(root, port=sock.getsockname()[1], **sections)
        daemon = Daemon(settings, start_worker=False)
        app = create_app(settings, daemon=daemon)
        with serving(app, sock=sock) as (url, server):
            yield Live(url=url, app=app, server=server, settings=settings, daemon=daemon)


@contextlib.contextmanager
def live_app(app: FastAPI) -> Iterator[Live]:
    """Any app (e.g. one router with short timings), served."""
    with bound_socket() as sock, serving(app, sock=sock) as (url, server):
        yield Live(url=url, app=app, server=server, settings=None, daemon=None)  # type: ignore[arg-type]


@contextlib.contextmanager
def bound_socket() -> Iterator[socket.socket]:
    # Bound here and handed to uvicorn: no window in which another process takes the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    with sock:
        yield sock


@contextlib.contextmanager
def serving(app: FastAPI, *, sock: socket.socket) -> Iterator[tuple[str, uvicorn.Server]]:
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", ws="none", timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="live-traind", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the traind app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        # What the real server does on SIGTERM: open event streams end, then uvicorn stops.
        close_event_streams(app)
        server.should_exit = True
        thread.join(timeout=20)
        if thread.is_alive():
            raise RuntimeError("the traind app did not stop within 20 s")
