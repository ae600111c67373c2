"""systemd notification: the client on real AF_UNIX datagram sockets, the judge that
decides whether the worker earns a watchdog ping, and the thread's READY/WATCHDOG/STATUS
decisions on a real ledger with scripted heartbeats."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.config.settings import load_settings
from service.daemon.notify import Notifier, socket_address, watchdog_interval
from service.daemon.readiness import NotifyTiming, ProgressJudge, Readiness, status_line
from service.daemon.supervisor import SupervisorStatus
from service.ledger import Ledger, WorkerState, WorkerStatus


class Listener:
    """The service manager's end: a datagram socket that collects messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(2)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2)
        return out


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    yield path


@pytest.fixture
def listener(sock_path: Path) -> Iterator[Listener]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        yield Listener(sock)


# ------------------------------------------------------------------ the client
def test_each_message_reaches_a_real_socket(listener, sock_path):
    notifier = Notifier(str(sock_path))
    assert notifier.enabled
    assert notifier.ready()
    assert listener.next() == "READY=1"
    assert notifier.status("training at step 5\nsecond line")
    assert listener.next() == "STATUS=training at step 5 second line"  # one line by protocol
    assert notifier.watchdog()
    assert listener.next() == "WATCHDOG=1"
    assert notifier.stopping()
    assert listener.next() == "STOPPING=1"
    assert notifier.extend_timeout(135.5)
    assert listener.next() == "EXTEND_TIMEOUT_USEC=135500000"
    assert notifier.notify(READY=1, STATUS="ready")
    assert listener.next() == "READY=1\nSTATUS=ready"
    assert notifier.stopping("bye")
    assert listener.next() == "STOPPING=1\nSTATUS=bye"


def test_an_abstract_socket_name_starts_with_a_nul_byte():
    name = f"traind-test-{uuid.uuid4().hex}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert Listener(sock).next() == "READY=1"


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier.from_environ()
    assert not notifier.enabled
    assert notifier.watchdog_s is None  # no one to ping
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.extend_timeout(10)


def test_an_address_that_is_not_a_unix_socket_is_refused_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="service.daemon.notify"):
        assert not Notifier("vsock:2:1234").enabled
    assert "not a unix socket path" in caplog.text


def test_a_vanished_socket_is_logged_once_never_raised(sock_path, caplog):
    notifier = Notifier(str(sock_path))  # nothing bound there
    with caplog.at_level(logging.DEBUG, logger="service.daemon.notify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "READY" in warnings[0].getMessage()
    # The socket comes back (systemd re-executed): sending works again.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        assert notifier.watchdog()
        assert Listener(sock).next() == "WATCHDOG=1"


def test_the_watchdog_interval_and_whom_it_is_for():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    own = {"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(own) == 1.5
    # A child that inherited the parent's environment must not ping for it.
    assert watchdog_interval({**own, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x.sock", **own})
    assert notifier.watchdog_s == 1.5


# ------------------------------------------------------------------ the judge
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def beat(
    step: int | None,
    *,
    at: float,
    state: WorkerState = WorkerState.TRAINING,
    pid: int = 100,
    worker: str = "w1",
    loaded: bool = True,
) -> WorkerStatus:
    """A heartbeat written ``at`` seconds after T0."""
    return WorkerStatus(
        worker_id=worker,
        pid=pid,
        state=state,
        model_loaded=loaded,
        global_step=step,
        file_id=None,
        start_step=None,
        target_step=None,
        loss=None,
        lr=None,
        tokens_per_s=None,
        eta_s=None,
        message=None,
        started_at=T0,
        heartbeat_at=T0 + timedelta(seconds=at),
    )


def judge() -> ProgressJudge:
    return ProgressJudge(fresh_s=2.0, start_window_s=30.0)


def ping_if_alive(j: ProgressJudge, hb: WorkerStatus | None, now: float, pid=100) -> bool:
    verdict = j.assess(hb, worker_pid=pid, now=now)
    if verdict.alive:
        j.vouched()
    return verdict.alive


def test_training_progress_is_a_changed_global_step():
    j = judge()
    assert ping_if_alive(j, beat(10, at=0), 0)
    assert ping_if_alive(j, beat(12, at=1), 1)
    # A new heartbeat at the same step (first beat of a file, a resume) is not progress.
    assert not ping_if_alive(j, beat(12, at=2), 2)
    assert ping_if_alive(j, beat(13, at=3), 3)
    # A rollback after bad steps moves the step back: that is the loop turning too.
    assert ping_if_alive(j, beat(9, at=4), 4)


def test_a_slow_step_is_still_progress_however_old_its_heartbeat():
    j = judge()
    assert ping_if_alive(j, beat(10, at=0), 0)
    hb = beat(11, at=1)
    j.assess(hb, worker_pid=100, now=1)  # seen, but no ping due yet
    assert ping_if_alive(j, hb, 9)  # 8 s later, far past fresh_s: still one more step


def test_a_frozen_training_worker_earns_no_pings():
    j = judge()
    assert ping_if_alive(j, beat(10, at=0), 0)
    assert ping_if_alive(j, beat(11, at=1), 1)  # its last heartbeat before SIGSTOP
    frozen = beat(11, at=1)
    for now in range(2, 40):
        verdict = j.assess(frozen, worker_pid=100, now=now)
        assert not verdict.alive
    assert "still at step 11" in verdict.reason
    assert ping_if_alive(j, beat(12, at=40), 40)  # SIGCONT: it trains again


@pytest.mark.parametrize("state", [WorkerState.PAUSED, WorkerState.IDLE, WorkerState.ERROR])
def test_a_deliberate_pause_or_idle_needs_fresh_new_heartbeats(state):
    """ERROR too: a worker waiting out a full disk keeps reporting, and restarting it would
    not free any space."""
    j = judge()
    # Paused: the step never moves, but the loop beats; each new beat earns a ping.
    for now in range(5):
        assert ping_if_alive(j, beat(50, at=now, state=state), now + 0.1)
    # Frozen while paused: the same heartbeat again is no sign of life.
    assert not ping_if_alive(j, beat(50, at=4, state=state), 5.1)
    # A new heartbeat, but seen long ago (pings fell due only now): stale.
    j.assess(beat(50, at=5, state=state), worker_pid=100, now=6)
    verdict = j.assess(beat(50, at=5, state=state), worker_pid=100, now=8.5)
    assert not verdict.alive and "has not reported for 2.5s" in verdict.reason


def test_a_restart_or_model_load_is_allowed_only_within_the_start_window():
    j = judge()
    assert ping_if_alive(j, beat(20, at=0), 0)
    # The worker died: the supervisor waits out its back-off (no live pid), then the new
    # worker reports `starting` while it loads the model.
    assert ping_if_alive(j, beat(20, at=0), 1, pid=None)
    assert ping_if_alive(j, beat(20, at=0), 5, pid=101)  # new pid, no heartbeat yet
    loading = beat(None, at=6, state=WorkerState.STARTING, pid=101, worker="w2", loaded=False)
    assert ping_if_alive(j, loading, 20, pid=101)
    assert ping_if_alive(j, loading, 31, pid=101)  # 30 s since the first miss
    verdict = j.assess(loading, worker_pid=101, now=32)
    assert not verdict.alive and "over 30s" in verdict.reason
    # The model is loaded at last: a lower step than before (it resumed from a
    # checkpoint) from a new worker is progress, and the window starts afresh.
    assert ping_if_alive(j, beat(16, at=33, pid=101, worker="w2"), 33, pid=101)
    assert ping_if_alive(j, beat(17, at=34, pid=101, worker="w2"), 64, pid=101)
    assert ping_if_alive(j, beat(17, at=34, pid=101, worker="w2"), 65, pid=None)


def test_a_heartbeat_from_another_process_is_history():
    j = judge()
    verdict = j.assess(beat(5, at=0, pid=99), worker_pid=100, now=0)
    assert verdict.alive and "has not reported yet" in verdict.reason
    assert not j.assess(beat(5, at=0, pid=99), worker_pid=100, now=31).alive


# ------------------------------------------------------------------ the thread
class FakeSupervisor:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.space: tuple[str, ...] = ()

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(
            pid=self.pid,
            restarts=0,
            last_exit=None,
            stopping=False,
            fatal=None,
            problem="; ".join(self.space) or None,
            space=self.space,
        )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}") as opened:
        yield opened


def write_beat(ledger: Ledger, *, worker: str, pid: int, state: WorkerState, step, loaded=True):
    ledger.heartbeat(
        worker_id=worker,
        pid=pid,
        state=state,
        model_loaded=loaded,
        started_at=T0,
        global_step=step,
    )


@pytest.fixture
def readiness(clean_env, tmp_path, ledger, listener, sock_path) -> Readiness:
    settings = load_settings(
        paths={"state": tmp_path / "state", "inbox": tmp_path / "in"},
        worker={"heartbeat_s": 0.2, "poll_s": 0.1, "stop_grace_s": 30},
    )
    # A previous run's worker, model loaded, with the pid this run's worker will get.
    write_beat(ledger, worker="old", pid=4242, state=WorkerState.IDLE, step=7)
    notifier = Notifier(str(sock_path), watchdog_s=2.0)
    made = Readiness(settings, ledger=ledger, supervisor=FakeSupervisor(4242), notifier=notifier)
    made.start()
    made.close()  # the tests drive tick() by hand
    return made


def test_timing_follows_the_settings_and_the_watchdog(clean_env):
    settings = load_settings(worker={"heartbeat_s": 1.0, "poll_s": 0.5, "stop_grace_s": 120})
    timing = NotifyTiming.from_settings(settings, watchdog_s=60.0)
    assert timing.tick_s == 1.0 and timing.fresh_s == 4.0
    assert timing.stop_extend_s == 135.0
    assert timing.start_window_s >= 120 + settings.worker.restart_backoff_max_s
    assert NotifyTiming.from_settings(settings, watchdog_s=2.0).tick_s == 0.5


def test_ready_waits_for_the_api_and_this_runs_worker_model(readiness, ledger, listener):
    readiness.tick(0.0)
    assert listener.drain() == ["STATUS=starting: the API is not listening yet"]
    readiness.listening()
    readiness.tick(0.5)  # the old run's row says model_loaded, with the same pid: not it
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.STARTING, step=None, loaded=False)
    readiness.tick(1.0)
    assert not readiness.ready
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.IDLE, step=7)
    readiness.tick(1.5)
    assert readiness.ready
    messages = listener.drain()
    assert "READY=1" in messages
    assert messages[-1].startswith("STATUS=idle at step 7; 0 queued")


def test_watchdog_pings_follow_progress_at_half_the_interval(readiness, ledger, listener):
    readiness.listening()
    step = 0

    def train(now: float) -> None:
        nonlocal step
        step += 1
        write_beat(ledger, worker="new", pid=4242, state=WorkerState.TRAINING, step=step)
        readiness.api_tick()
        readiness.tick(now)

    train(0.0)
    assert readiness.ready
    listener.drain()
    pings = []
    for i in range(1, 9):  # ticks every 0.5 s: a 2 s watchdog wants a ping every 1 s
        train(i * 0.5)
        pings += [m for m in listener.drain() if m == "WATCHDOG=1"]
    assert len(pings) == 4
    # The worker freezes: no new heartbeat, no ping, and STATUS says why.
    for i in range(9, 20):
        readiness.api_tick()
        readiness.tick(i * 0.5)
    frozen = listener.drain()
    assert "WATCHDOG=1" not in frozen
    assert any("watchdog: training, but still at step" in m for m in frozen)
    train(10.0)
    assert listener.drain()[0] == "WATCHDOG=1"


def test_a_full_state_disk_keeps_the_pings_going(readiness, ledger, listener):
    """On a full state disk the worker cannot write its heartbeat; it waits for space, as
    it should, and systemd must not restart the service for it."""
    readiness.listening()
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.TRAINING, step=3)
    readiness.api_tick()
    readiness.tick(0.0)
    listener.drain()
    readiness.supervisor.space = ("out of disk space: paths.state (/s) has 0 bytes free",)
    messages = []
    for i in range(1, 40):  # no new heartbeat for 20 s: a ping every 1 s all the same
        readiness.api_tick()
        readiness.tick(i * 0.5)
        messages += listener.drain()
    assert messages.count("WATCHDOG=1") >= 18
    assert any("out of disk space" in m for m in messages if m.startswith("STATUS="))


def test_no_ping_when_the_api_loop_stalls(readiness, ledger, listener):
    readiness.listening()
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.PAUSED, step=3)
    readiness.tick(0.0)
    listener.drain()
    readiness.api_tick()  # the event loop's last turn
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.PAUSED, step=3)
    readiness.tick(time.monotonic() + 1.5)  # stale for a 2 s watchdog (limit 1 s)
    assert "WATCHDOG=1" not in listener.drain()
    readiness.api_tick()
    readiness.tick(time.monotonic())
    assert "WATCHDOG=1" in listener.drain()


def test_stopping_says_so_once_and_extends_the_timeout_each_time(readiness, ledger, listener):
    readiness.listening()
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.TRAINING, step=1)
    readiness.tick(0.0)
    listener.drain()
    readiness.stopping()
    readiness.stopping()
    assert listener.drain() == [
        "STOPPING=1\nSTATUS=stopping: the worker checkpoints (up to 30s)",
        "EXTEND_TIMEOUT_USEC=45000000",
        "EXTEND_TIMEOUT_USEC=45000000",
    ]
    write_beat(ledger, worker="new", pid=4242, state=WorkerState.TRAINING, step=2)
    readiness.api_tick()
    readiness.tick(5.0)
    assert listener.drain() == []  # systemd disarmed its watchdog; no more STATUS either


def test_without_notify_socket_no_thread_is_started(clean_env, tmp_path, ledger, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    settings = load_settings(paths={"state": tmp_path / "state"})
    made = Readiness(settings, ledger=ledger, supervisor=FakeSupervisor(1))
    made.start()
    assert made._thread is None
    made.stopping()
    made.close()


def test_the_status_line():
    status = {
        "state": "training",
        "global_step": 120,
        "current_file": {"id": 2, "name": "big.jsonl", "progress": 0.456},
        "queue": {"queued": 3, "done": 1},
    }
    assert status_line(status) == "training at step 120 of big.jsonl (46%); 3 queued"
    assert status_line({**status, "state": "paused"}, note="x") == (
        "paused at step 120 of big.jsonl (46%); 3 queued; x"
    )
    idle = {"state": "idle", "global_step": None, "current_file": None, "queue": {}}
    assert status_line(idle) == "idle at no step yet; 0 queued"
    error = {**idle, "state": "error", "error": "the worker refused its settings"}
    assert status_line(error).startswith("error at no step yet: the worker refused")
