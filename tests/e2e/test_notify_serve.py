"""A real ``traind serve`` under a stand-in for systemd: the test binds the notification
socket, sets a short watchdog, and reads what the service says and when.

READY must wait for the worker's model; watchdog pings must follow the worker's
progress (a SIGSTOPped worker gets the unit restarted, not vouched for); SIGTERM must say
STOPPING, ask for time, and still end with the final checkpoint and exit status 0."""

import itertools
import os
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import wait_for

from tests.corpus import make_drops

WATCHDOG_S = 1.5


class NotifySocket:
    """The service manager's end: records each datagram with its arrival (wall) time."""

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.time(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def times(self, line: str, *, since: float = 0.0) -> list[float]:
        """Arrival times of messages holding ``line``, at or after ``since``."""
        return [t for t, text in list(self.messages) if line in text.split("\n") and t >= since]

    def lines(self, prefix: str, *, since: float = 0.0) -> list[str]:
        return [
            line
            for t, text in list(self.messages)
            if t >= since
            for line in text.split("\n")
            if line.startswith(prefix)
        ]

    def wait(self, line: str, *, timeout: float, since: float = 0.0) -> float:
        """The arrival time of the first message holding ``line`` after ``since``."""
        found = wait_for(
            lambda: self.times(line, since=since), timeout=timeout, what=f"{line} from the service"
        )
        return found[0]


@pytest.fixture
def notify_socket(tmp_path):
    made = NotifySocket(tmp_path / "notify.sock")
    yield made
    made.close()


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_ready_watchdog_and_stop_follow_the_worker(tmp_path, service_factory, notify_socket):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 20)
    service = service_factory(
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
        # Long enough to still be training after the freeze below: 8 passes took 5 s on a
        # quick machine, so the file could end while frozen and "training again" never came.
        TRAIND_TRAIN__EPOCHS_PER_FILE="40",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="100000",
    )
    service.start(wait_ready=False)

    # READY: only once the worker has loaded the model, and /readyz agrees from then on.
    ready_at = notify_socket.wait("READY=1", timeout=60)
    starts = service.events("training_start")
    assert len(starts) == 1 and stamp(starts[0]) <= ready_at
    # No ping before READY: systemd arms the watchdog only then.
    assert not [t for t in notify_socket.times("WATCHDOG=1") if t < ready_at]
    ledger = service.ledger()
    try:
        worker = ledger.worker_status()
    finally:
        ledger.close()
    assert worker is not None and worker.model_loaded
    assert service.get("/readyz").status_code == 200
    assert len(notify_socket.times("READY=1")) == 1
    assert any(line.startswith("STATUS=starting") for line in notify_socket.lines("STATUS="))

    # Training: pings come at about half the watchdog interval, and STATUS says so.
    service.drop(big)
    wait_for(
        lambda: (service.status() or {}).get("state") == "training",
        timeout=30,
        what="training",
    )
    training_at = time.time()
    time.sleep(3 * WATCHDOG_S)
    pings = notify_socket.times("WATCHDOG=1", since=training_at)
    assert len(pings) >= 3, notify_socket.messages[-10:]
    assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_S
    wait_for(
        lambda: any(
            s.startswith("STATUS=training at step") for s in notify_socket.lines("STATUS=")
        ),
        timeout=5,
        what="a training STATUS line",
    )

    # A frozen worker: its heartbeat stops, so the pings stop (systemd would restart us).
    pid = service.status()["worker"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(WATCHDOG_S)  # a ping for the last heartbeat before the freeze may follow
        frozen_at = time.time()
        time.sleep(3 * WATCHDOG_S)
        assert notify_socket.times("WATCHDOG=1", since=frozen_at) == []
        assert any("watchdog:" in s for s in notify_socket.lines("STATUS=", since=frozen_at))
        assert service.proc.poll() is None
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.time()
    notify_socket.wait("WATCHDOG=1", timeout=10, since=resumed_at)
    wait_for(
        lambda: (s := service.status()) and s["state"] == "training" and s["worker"]["pid"] == pid,
        timeout=10,
        what="the same worker training again",
    )

    # SIGTERM: STOPPING at once, time for the checkpoint, then a clean exit.
    grace = float(service.env["TRAIND_WORKER__STOP_GRACE_S"])
    term_at = time.time()
    assert service.terminate(timeout=grace) == 0
    assert time.time() - term_at < grace
    stopping_at = notify_socket.wait("STOPPING=1", timeout=5, since=term_at)
    extend = notify_socket.lines("EXTEND_TIMEOUT_USEC=", since=term_at)
    assert extend and all(int(x.split("=")[1]) >= grace * 1e6 for x in extend)
    saved = [e for e in service.events("checkpoint_saved") if e["reason"] == "stop"]
    assert len(saved) == 1 and stopping_at <= stamp(saved[0])
    assert notify_socket.times("WATCHDOG=1", since=stopping_at + 0.5) == []
