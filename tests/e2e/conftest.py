"""Drive a real ``traind serve`` subprocess on a free loopback port."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.ledger import FileState, Ledger
from tests.corpus import traind_env

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def service_env(root: Path, *, port: int, **extra: str) -> dict[str, str]:
    """``traind_env`` plus what a daemon needs: a port and quick watcher and worker loops
    (``extra`` may override any of them)."""
    quick = {
        "TRAIND_SERVER__PORT": str(port),
        "TRAIND_WATCHER__SETTLE_S": "0.3",
        "TRAIND_WATCHER__RESCAN_INTERVAL_S": "2",
        "TRAIND_WORKER__POLL_S": "0.1",
        "TRAIND_WORKER__HEARTBEAT_S": "0.2",
        "TRAIND_WORKER__RESTART_BACKOFF_S": "0.2",
        "TRAIND_WORKER__STOP_GRACE_S": "30",
        "TRAIND_WORKER__DISK_RETRY_S": "0.5",
        "TRAIND_LEDGER__LEASE_S": "5",
        "PYTHONPATH": str(REPO),
    }
    return traind_env(root, **{**quick, **extra})


class Service:
    """One ``traind serve`` process group, started and stopped by a test."""

    def __init__(self, root: Path, **extra: str) -> None:
        self.root = root
        self.port = free_port()
        self.env = service_env(root, port=self.port, **extra)
        self.proc: subprocess.Popen | None = None
        self.log = root / "serve.log"
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def start(self, *, wait_ready: bool = True) -> "Service":
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli.main", "serve"],
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the worker too
            )
        if wait_ready:
            wait_for(self.ready, timeout=60, what="the worker to load the model")
        return self

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def status(self) -> dict | None:
        try:
            return self.get("/v1/status").json()
        except httpx.HTTPError:
            return None

    def ready(self) -> bool:
        """This run's worker has the model loaded (the last heartbeat of the previous run's,
        ``stopping``, can still look fresh for a moment after a quick restart)."""
        status = self.status()
        worker = status["worker"] if status else {}
        return bool(worker.get("model_loaded") and worker.get("state") != "stopping")

    @property
    def state(self) -> Path:
        return Path(self.env["TRAIND_PATHS__STATE"])

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.state / 'ledger.db'}")

    def files(self) -> list:
        ledger = self.ledger()
        try:
            return ledger.list_files(limit=10_000)[0]
        finally:
            ledger.close()

    def wait_done(self, count: int, *, timeout: float = 120) -> list:
        def finished():
            files = self.files()
            done = [f for f in files if f.state is FileState.DONE]
            return done if len(done) >= count else None

        return wait_for(finished, timeout=timeout, what=f"{count} files done", every=0.2)

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]

    def drop(self, source: Path, *, name: str | None = None) -> Path:
        """The recommended way: write elsewhere, rename into the inbox."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        temp = staging / (name or source.name)
        shutil.copyfile(source, temp)
        target = self.inbox / (name or source.name)
        temp.replace(target)
        return target

    def terminate(self, *, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole service: main process and worker, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log.exists() else ""


def traind_cli(service: Service, *args: str) -> subprocess.CompletedProcess:
    """Run a ``traind`` client command against ``service``."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args, "--url", service.url],
        env=service.env,
        cwd=service.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def service_factory(tmp_path):
    made: list[Service] = []

    def make(name: str = "svc", **extra: str) -> Service:
        service = Service(tmp_path / name, **extra)
        made.append(service)
        return service

    yield make
    for service in made:
        service.cleanup()
