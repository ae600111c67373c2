"""A real uvicorn server in a thread, on a free loopback port, for the API tests.

The app is the one ``traind serve`` runs, with a real inbox watcher and no worker: a
test that needs a worker writes its heartbeats (or claims a file) through the ledger.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.web.app import create_app
from service.config.settings import Settings, load_settings
from service.daemon.main_process import Daemon
from service.ledger import FileRecord, Ledger, WorkerState

VALID = "".join(f'{{"text": "line {i} of a small drop"}}\n' for i in range(20))
INVALID = '{"text": "fine"}\nnot json at all\n'


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class LiveApi:
    """One running API: its settings, daemon, URL, token and an HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = Daemon(settings, start_worker=False)
        self.app = create_app(settings, daemon=self.daemon)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-api", daemon=True)
        self.client: httpx.Client | None = None

    def start(self) -> LiveApi:
        self.thread.start()
        wait_for(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout=30,
            what="the server to start",
        )
        assert self.server.started, "the server did not start (see the log)"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"

    @property
    def token(self) -> str:
        return self.app.state.token

    @property
    def ledger(self) -> Ledger:
        return self.daemon.ledger

    @property
    def inbox(self) -> Path:
        return self.settings.paths.inbox

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        assert self.client is not None
        return self.client.get(path, **kwargs)

    def post(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """POST with the right token unless ``token`` says otherwise."""
        assert self.client is not None
        headers = {**self.auth(token), **kwargs.pop("headers", {})}
        return self.client.post(path, headers=headers, **kwargs)

    def drop(self, name: str, text: str) -> None:
        """Write elsewhere, rename into the inbox (the recommended way)."""
        staging = self.settings.paths.state / "test-drops"
        staging.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text, encoding="utf-8")
        os.rename(staging / name, self.inbox / name)

    def records(self) -> list[FileRecord]:
        return self.ledger.list_files(limit=1000)[0]

    def wait_recorded(self, count: int, *, timeout: float = 10.0) -> list[FileRecord]:
        """Wait until ``count`` files are recorded and moved out of the top level."""

        def placed() -> list[FileRecord] | None:
            records = self.records()
            if len(records) < count:
                return None
            return records if all(Path(r.path).parent != self.inbox for r in records) else None

        return wait_for(placed, timeout=timeout, what=f"{count} recorded files")

    def heartbeat(self, *, model_loaded: bool = True, **fields: Any) -> None:
        fields.setdefault("state", WorkerState.IDLE)
        self.ledger.heartbeat(
            worker_id="test-worker",
            pid=os.getpid(),
            model_loaded=model_loaded,
            started_at=datetime.now(UTC),
            **fields,
        )

    def train(self, file_id: int) -> FileRecord:
        """Claim a queued file the way the worker does: it is then ``training``."""
        record = self.ledger.claim(file_id, worker_id="test-worker", lease_s=600)
        assert record is not None
        return record


def api_settings(root: Path, **sections: dict[str, Any]) -> Settings:
    defaults: dict[str, dict[str, Any]] = {
        "paths": {
            "inbox": root / "inbox",
            "checkpoints": root / "checkpoints",
            "state": root / "state",
        },
        "watcher": {"settle_s": 0.2, "rescan_interval_s": 1.0},
        "worker": {"heartbeat_s": 0.5},
    }
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    return load_settings(**defaults)


@pytest.fixture
def api_factory(clean_env: Path) -> Iterator[Callable[..., LiveApi]]:
    """``make(root=..., **sections)``: start a server on settings for ``root``."""
    started: list[LiveApi] = []

    def make(root: Path | None = None, **sections: dict[str, Any]) -> LiveApi:
        live = LiveApi(api_settings(root or clean_env / "run", **sections))
        started.append(live)
        return live.start()

    yield make
    for live in started:
        if live.thread.is_alive():
            live.stop()


@pytest.fixture
def api(api_factory: Callable[..., LiveApi]) -> LiveApi:
    return api_factory()
