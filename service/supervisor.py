"""Keeps one training worker process alive (design section 1).

The worker is a plain child process (``python -m service.worker``) that inherits the
service's environment and config file. If it dies it is restarted after a back-off that
doubles up to a limit (and resets once a worker has stayed up a while). On stop the
worker gets SIGTERM, which makes it checkpoint at the next optimizer step and release its
claim; after ``worker.stop_grace_s`` it is killed. A worker that exits with status 2
(bad settings) is not restarted: that needs a person, and the service reports it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.ledger import Ledger
from service.settings import Settings

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 60.0
"""A worker that stayed up this long resets the restart back-off."""
EXIT_BAD_SETTINGS = 2


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


class Supervisor:
    """Starts, watches and stops the worker process from a thread of the main process."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        command: list[str] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.command = command or worker_command(settings.config_file)
        self.on_fatal = on_fatal
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts = 0
        self._last_exit: int | None = None
        self._fatal: str | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traind-supervisor", daemon=True)
        self._thread.start()

    def status(self) -> SupervisorStatus:
        proc = self._proc
        return SupervisorStatus(
            pid=proc.pid if proc is not None and proc.poll() is None else None,
            restarts=self._restarts,
            last_exit=self._last_exit,
            stopping=self._stopping.is_set(),
            fatal=self._fatal,
        )

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
                proc.kill()
                code = proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code

    def _run(self) -> None:
        backoff = self.settings.worker.restart_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = subprocess.Popen(self.command, env=os.environ.copy())
            log.info("worker started (pid %d)", self._proc.pid)
            code = self._watch(self._proc)
            self._last_exit = code
            if self._stopping.is_set():
                return
            if code == EXIT_BAD_SETTINGS:
                self._fatal = "the worker refused its settings (exit status 2); see its log lines"
                log.error("%s; not restarting it", self._fatal)
                if self.on_fatal is not None:
                    self.on_fatal(self._fatal)
                return
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                backoff = self.settings.worker.restart_backoff_s
            log.error("worker exited with status %s; restarting it in %.1fs", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.settings.worker.restart_backoff_max_s)
            self._restarts += 1

    def _watch(self, proc: subprocess.Popen) -> int:
        """Wait for the worker to end, returning expired claims to the queue meanwhile."""
        interval = max(1.0, self.settings.ledger.lease_s / 4)
        while True:
            try:
                return proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                pass
            try:
                self.ledger.reap_expired()
            except Exception:  # the reaper must never take the supervisor down
                log.exception("reaping expired claims failed; will retry")


def worker_command(config: Path | None) -> list[str]:
    """The command line the supervisor runs (for documentation and tests)."""
    return [sys.executable, "-m", "service.worker", *(["--config", str(config)] if config else [])]
