"""Keeps one training worker process alive, and knows when it died (ARCHITECTURE.md,
section 2).

The worker is a plain child process (``python -m service.worker``) that inherits the
service's environment, plus the id it reports under (``TRAIND_WORKER_ID``). When
``[worker]`` asks for several processes, it is node 0's torchrun agent instead, running
one worker per process (:mod:`service.worker.torchrun`), and "the worker" below is that
whole group: a SIGTERM to the agent reaches every rank, a kill takes every process below
the agent, and the death of any rank ends the agent, as the worker's would. It loads its
settings from the settings in force that the main process wrote
(``<paths.state>/settings-in-force.json``, :mod:`service.config.in_force`), never from
``traind.toml``: a worker restarted after a crash gets the settings in force, not a file
edited since. If it dies it is restarted after a back-off that doubles up to a
limit (and resets once a worker has stayed up a while). On stop the worker gets SIGTERM,
which makes it checkpoint at the next optimizer step and release its claim; after
``worker.stop_grace_s`` it is killed. A worker that exits with status 2 (bad settings,
or a lineage it must not touch) is not restarted: that needs a person.

Only the supervisor sees a worker die, so it alone counts crashes (ARCHITECTURE.md rule
13): an abnormal exit, or a hang, is one attempt against the file the worker was
training; a clean stop, a restart of the service or a slow step is not. It also watches the worker's
heartbeat: a worker silent for ``worker.hang_timeout_s`` is reported, killed and
replaced. And it looks at the free disk space, which ``/v1/status`` reports as an error
while a folder is too full to write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service.config.settings import Settings
from service.diskspace import space_problems
from service.ledger import FileState, Ledger, WorkerState, WorkerStatus
from service.signals import EXIT_BAD_SETTINGS, WAKE_SIGNAL, WORKER_ID_ENV
from service.worker.agent import kill_tree
from service.worker.torchrun import worker_launch
from trainer.records.events import EventLog
from trainer.records.storage import DiskFullError

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 60.0
"""A worker that stayed up this long resets the restart back-off."""
MODEL_LOAD_ALLOWANCE_S = 300.0
"""Extra silence allowed while a worker starts (imports, model load, tokenizing)."""
WAKE_AGAIN_S = 0.1
"""No second wake sooner than this after one (a burst of drops queues many files): the
first has the worker look at the ledger, where it finds them all."""
SPACE_CHECK_S = 5.0
"""How often the free disk space is looked at."""


@dataclass(frozen=True, kw_only=True)
class SupervisorStatus:
    """What the supervisor knows of its worker."""

    pid: int | None
    """Worker process id while one runs."""
    restarts: int
    """Workers started after the first."""
    last_exit: int | None
    """Exit status of the last worker that ended (negative: killed by that signal)."""
    stopping: bool
    """A stop was requested."""
    fatal: str | None
    """Why the worker will not be restarted, if it will not."""
    problem: str | None = None
    """What is wrong now, while it lasts: a hung worker being replaced, a full disk."""
    worker_id: str | None = None
    """The id the running worker reports under."""
    space: tuple[str, ...] = ()
    """The folders too full to write now, each said in words (part of ``problem``)."""


class Supervisor:
    """Starts, watches and stops the worker process from a thread of the main process."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        events: EventLog | None = None,
        command: list[str] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.events = events
        # Reads only sections a reload never changes ([worker], [ledger], [paths]).
        self.settings = settings
        launch = worker_launch(settings)
        self.command = command or list(launch.argv)
        self._launch = launch
        self.on_fatal = on_fatal
        self._proc: subprocess.Popen | None = None
        self._worker_id: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts = 0
        self._last_exit: int | None = None
        self._fatal: str | None = None
        self._hung: str | None = None
        self._space: list[str] = []
        self._space_checked = 0.0
        self._lock = threading.Lock()
        self._woken_at = float("-inf")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traind-supervisor", daemon=True)
        self._thread.start()

    def status(self) -> SupervisorStatus:
        proc = self._proc
        problems = [p for p in (self._hung, *self._space) if p]
        return SupervisorStatus(
            pid=proc.pid if proc is not None and proc.poll() is None else None,
            restarts=self._restarts,
            last_exit=self._last_exit,
            stopping=self._stopping.is_set(),
            fatal=self._fatal,
            problem="; ".join(problems) or None,
            worker_id=self._worker_id,
            space=tuple(self._space),
        )

    def wake(self) -> None:
        """Cut a waiting worker's wait short (a file was queued, a request came): it looks
        at the ledger now instead of at its next poll. Only a worker whose latest heartbeat
        says it waits (idle or paused): it has its wake handler by then, and a training one
        needs no wake (nor a signal in the middle of a step). Not a torchrun group's: only
        its rank 0 reads the ledger, and that is not the process started here."""
        if self._launch.group or time.monotonic() - self._woken_at < WAKE_AGAIN_S:
            return
        with self._lock:
            proc, worker_id = self._proc, self._worker_id
        if proc is None or worker_id is None or proc.poll() is not None:
            return
        try:
            beat = self.ledger.worker_status(worker_id=worker_id)
        except Exception:  # a wake is a shortcut: the worker's poll still comes
            log.debug("reading the worker's heartbeat to wake it failed", exc_info=True)
            return
        if beat is None or beat.state not in (WorkerState.IDLE, WorkerState.PAUSED):
            return
        self._woken_at = time.monotonic()
        with contextlib.suppress(OSError):  # it just ended
            proc.send_signal(WAKE_SIGNAL)

    def stop(self) -> int | None:
        """SIGTERM the worker, wait up to the grace time, then kill; returns its exit status."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        code = None
        if proc is not None and proc.poll() is None:
            grace = self.settings.worker.stop_grace_s
            log.info(
                "stopping the worker (pid %d); it checkpoints first (up to %.0fs)", proc.pid, grace
            )
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.error("the worker did not stop within %.0fs; killing it", grace)
                kill_tree(proc.pid)
                code = proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code

    def _run(self) -> None:
        backoff = self.settings.worker.restart_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            worker_id = f"{socket.gethostname()}-{os.getpid()}-w{uuid.uuid4().hex[:8]}"
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = subprocess.Popen(
                    self.command,
                    env={**os.environ, **self._launch.env, WORKER_ID_ENV: worker_id},
                    start_new_session=self._launch.group,
                )
                self._worker_id = worker_id
            if self._launch.group:
                log.info(
                    "worker group started: torchrun agent pid %d, %d processes here, world size %d",
                    self._proc.pid,
                    self.settings.worker.nproc_per_node,
                    self.settings.world_size(),
                )
            else:
                log.info("worker started (pid %d)", self._proc.pid)
            code, hung = self._watch(self._proc, worker_id)
            self._last_exit = code
            if self._stopping.is_set():
                return
            if code == EXIT_BAD_SETTINGS:
                self._fatal = (
                    "the worker refused its settings or its lineage (exit status 2); "
                    "see its log lines"
                )
                log.error("%s; not restarting it", self._fatal)
                if self.on_fatal is not None:
                    self.on_fatal(self._fatal)
                return
            if hung or code != 0:
                reason = hung or _exit_reason(code, group=self._launch.group)
                self._count_crash(worker_id, reason=reason)
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                backoff = self.settings.worker.restart_backoff_s
            log.error("worker exited with status %s; restarting it in %.1fs", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.settings.worker.restart_backoff_max_s)
            self._restarts += 1

    def _watch(self, proc: subprocess.Popen, worker_id: str) -> tuple[int, str | None]:
        """Wait for the worker to end, meanwhile returning the claims of dead workers to the
        queue, looking at the disk space, and killing the worker if it hangs. Its exit
        status, and why it was killed as hung (None if it ended by itself)."""
        settings = self.settings
        reap_every = max(1.0, settings.ledger.lease_s / 4)
        tick = max(0.1, min(1.0, settings.worker.hang_timeout_s / 10))
        next_reap = 0.0
        seen: tuple | None = None
        seen_at = time.monotonic()
        while True:
            try:
                return proc.wait(timeout=tick), None
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            try:
                self._look_at_space(now)
                # A read: it never waits for a writer (WAL), not even a hung worker that
                # stopped holding the write lock.
                beat = self.ledger.worker_status(worker_id=worker_id)
            except Exception:  # the watch must never take the supervisor down
                log.exception("reading the worker's heartbeat failed; will retry")
                continue
            mark = (beat.heartbeat_at, beat.state) if beat else None
            if mark != seen:
                seen, seen_at = mark, now
                if beat is not None and beat.model_loaded:
                    self._hung = None
            hung = self._hang(beat, silent_s=now - seen_at)
            if hung is not None:
                self._hung = hung
                log.error("%s", hung)
                kill_tree(proc.pid)
                return proc.wait(), hung
            if now >= next_reap:
                next_reap = now + reap_every
                try:
                    # The live worker's claims are never reaped: a slow step is not a death.
                    self.ledger.reap_expired(alive=worker_id)
                except Exception:
                    log.exception("returning expired claims to the queue failed; will retry")

    def _hang(self, beat: WorkerStatus | None, *, silent_s: float) -> str | None:
        """Why the worker counts as hung, or None. A worker that cannot write its heartbeat
        because the state disk is full is waiting, not hung."""
        allowed = self.settings.worker.hang_timeout_s
        if beat is None or beat.state is WorkerState.STARTING:
            allowed += MODEL_LOAD_ALLOWANCE_S
        if silent_s < allowed or self._space:
            return None
        pid = self._proc.pid if self._proc else None
        return (
            f"the worker (pid {pid}) has not reported for {silent_s:.0f}s "
            f"(worker.hang_timeout_s = {self.settings.worker.hang_timeout_s:g}); it is hung: "
            "killing and replacing it"
        )

    def _look_at_space(self, now: float) -> None:
        if now - self._space_checked < SPACE_CHECK_S:
            return
        self._space_checked = now
        paths = self.settings.paths
        problems = space_problems(checkpoints=paths.checkpoints, state=paths.state)
        if problems != self._space:
            for problem in problems:
                log.error("%s", problem)
            if self._space and not problems:
                log.warning("disk space is back")
        self._space = problems

    def _count_crash(self, worker_id: str, *, reason: str) -> None:
        """One more attempt against each file the dead worker was training."""
        beat = self.ledger.worker_status(worker_id=worker_id)
        if beat is not None and beat.state is WorkerState.ERROR and beat.message:
            reason = f"{reason}: {beat.message}"
        try:
            records = self.ledger.record_crash(
                worker_id=worker_id,
                reason=reason,
                max_attempts=self.settings.worker.max_attempts,
            )
        except DiskFullError:
            log.error("could not count the crash (%s): the ledger's disk is full", reason)
            return
        except Exception:  # counting must never take the supervisor (and its restarts) down
            log.exception("could not count the crash (%s)", reason)
            return
        for record in records:
            if self.events is not None and record.state is FileState.FAILED:
                try:
                    self.events.emit(
                        "file_failed", id=record.id, file=record.name, reason=record.error
                    )
                except DiskFullError:
                    log.error("could not record the failure of %s: disk full", record.name)


def _exit_reason(code: int, *, group: bool = False) -> str:
    # A group's agent exits with the status of its first failed process, 128 + N for one
    # killed by signal N (service.worker.agent); torchrun's lines in the log name it.
    who = "a process of the worker group" if group and code > 0 else "the worker"
    signum = -code if code < 0 else code - 128 if group and code > 128 else None
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = " (the kernel's OOM killer?)" if signum == signal.SIGKILL else ""
        return f"{who} was killed by {name}{hint}"
    return f"{who} exited with status {code}"
