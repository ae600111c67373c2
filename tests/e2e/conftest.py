"""Drive a real ``traind serve`` subprocess on a free loopback port."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.ledger import FileState, Ledger
from tests.corpus import traind_env
from trainer.checkpoint import latest_checkpoint

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

        # A ledger read takes a few ms: polling it every 50 ms costs little, and each wait
        # ends within 50 ms of the last file (0.2 s before, about 0.1 s lost per wait).
        return wait_for(finished, timeout=timeout, what=f"{count} files done")

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


class Reference:
    """An uninterrupted ``traind train`` of ``drops`` with the service's training settings
    (and ``extra`` ones), started at once and waited for by :meth:`result`.

    It runs while the test drives its service, which keeps about one of two cores busy:
    the reference takes the other one instead of adding its whole time to the test's. It
    runs at a lower CPU priority, so the service under test keeps its pace; the bits it
    trains do not depend on that (a CPU run is bit-identical whatever the load)."""

    def __init__(self, root: Path, drops, **extra: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.log = root / "train.log"
        env = service_env(root, port=1, **extra)  # no server is started
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli.main", "train", *map(str, drops)],
                env=env,
                cwd=root,
                stdout=out,  # a file, not a pipe: nobody reads it while it runs
                stderr=subprocess.STDOUT,
            )
        _started.setdefault(threading.get_ident(), []).append(self.proc)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, 10)

    def result(self, *, timeout: float = 300):
        """Wait for the run; its newest checkpoint."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the reference run took over {timeout}s") from None
        assert code == 0, self.log.read_text()[-3000:]
        return latest_checkpoint(self.root / "checkpoints")


_started: dict[int, list[subprocess.Popen]] = {}
"""The reference runs started by each thread, stopped when its test or scenario ends."""


def _stop_references() -> None:
    for proc in _started.pop(threading.get_ident(), []):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _no_reference_outlives_its_test():
    """A test that fails before it waits for its reference must not leave it running."""
    yield
    _stop_references()


class Background:
    """``work()`` run in a thread from now on; :meth:`result` waits for it and returns what
    it returned, or raises what it raised (an assertion of ``work`` fails the test that
    asks for the result)."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._outcome: tuple[bool, object] | None = None
        self._thread = threading.Thread(
            target=self._run, args=(work,), name="test-background", daemon=True
        )
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            self._outcome = (True, work())
        except BaseException as exc:  # handed over by result()
            self._outcome = (False, exc)
        finally:
            _stop_references()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def result(self, *, timeout: float = 600):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"still running after {timeout}s")
        assert self._outcome is not None
        done, value = self._outcome
        if not done:
            raise value  # type: ignore[misc]
        return value


def selected(request: pytest.FixtureRequest, test_name: str) -> bool:
    """Whether this session runs the test ``test_name`` of the requesting module."""
    return any(
        item.module is request.module and getattr(item, "originalname", None) == test_name
        for item in request.session.items
    )


def beside_the_module(test_name: str, scenario: Callable[..., object]):
    """A module-scoped autouse fixture that runs ``scenario(root, service_factory)``, the
    body of the test ``test_name`` with all its checks, in a thread from the start of the
    module while its other tests run (when that test is selected); the test then asks
    for the outcome: ``<fixture>.result()`` raises what the scenario raised.

    For a long scenario whose checks do not depend on its pace: each service keeps about
    one of the two cores busy, so it runs on the other instead of adding its whole time.
    ``service_factory`` is the fixture's, its services under ``root``."""

    @pytest.fixture(scope="module", autouse=True)
    def fixture(request, tmp_path_factory):
        if not selected(request, test_name):
            yield None
            return
        root = tmp_path_factory.mktemp(test_name[:40])

        def run():
            made: list[Service] = []

            def make(name: str = "svc", **extra: str) -> Service:
                service = Service(root / name, **extra)
                made.append(service)
                return service

            try:
                return scenario(root, make)
            finally:
                for service in made:
                    service.cleanup()

        started = Background(run)
        yield started
        started.wait(timeout=600)  # its services are gone before the module ends

    return fixture


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
