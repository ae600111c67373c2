"""The parts of ``traind serve`` that run in its main process, composed.

The main process never imports torch: it runs the inbox watcher and the supervisor
(which starts the worker as a child process), and the API reads the ledger. The API's
lifespan calls :meth:`Daemon.start` and :meth:`Daemon.stop`. Under systemd the daemon
also reports to the service manager (:mod:`service.daemon.readiness`: READY, STATUS, watchdog
pings and STOPPING).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.config.settings import Settings
from service.daemon.readiness import Readiness
from service.daemon.status import read_status
from service.daemon.supervisor import Supervisor
from service.inbox.inventory import take_inventory
from service.inbox.watcher import InboxWatcher
from service.ledger import Ledger
from trainer.records.events import EventLog

log = logging.getLogger(__name__)


class Daemon:
    """Ledger, watcher and supervisor with one start and one stop."""

    def __init__(self, settings: Settings, *, start_worker: bool = True) -> None:
        self.settings = settings
        self.ledger = Ledger.open(
            settings.database_url(), busy_timeout_ms=settings.ledger.busy_timeout_ms
        )
        self.events = EventLog(settings.run_paths().events)
        self.watcher = InboxWatcher(
            settings.paths.inbox, ledger=self.ledger, settings=settings.watcher, events=self.events
        )
        self.supervisor = (
            Supervisor(settings, ledger=self.ledger, events=self.events, on_fatal=self._fatal)
            if start_worker
            else None
        )
        self.readiness = Readiness(settings, ledger=self.ledger, supervisor=self.supervisor)
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self.on_fatal = None

    def start(self) -> None:
        self.settings.paths.checkpoints.mkdir(parents=True, exist_ok=True)
        # Before the watcher: a new drop must not take an id an old file carries.
        take_inventory(
            self.watcher.layout,
            self.ledger,
            checkpoints=self.settings.paths.checkpoints,
            events=self.events,
            max_line_bytes=self.settings.watcher.max_line_bytes,
        )
        self.watcher.start()
        self.readiness.start()  # before the worker: it must know the previous run's heartbeat
        if self.supervisor is not None:
            self.supervisor.start()
        log.info(
            "traind is watching %s; checkpoints in %s; ledger %s",
            self.settings.paths.inbox,
            self.settings.paths.checkpoints,
            self.settings.database_url(),
        )

    def stop(self) -> None:
        """Stop the worker first (it checkpoints), then the watcher; idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.readiness.stopping()  # systemd: STOPPING=1, and time for the final checkpoint
        if self.supervisor is not None:
            code = self.supervisor.stop()
            log.info("worker stopped with status %s", code)
        self.readiness.close()
        self.watcher.stop()
        self.ledger.close()

    def status(self) -> dict[str, Any]:
        """What /v1/status, /metrics and the CLI report: :func:`service.daemon.status.read_status`
        with everything this process knows (stopping, a fatal error, the supervisor's)."""
        worker = self.settings.worker
        return read_status(
            self.ledger,
            heartbeat_s=worker.heartbeat_s,
            stopping=self.stopping.is_set(),
            fatal=self.fatal,
            supervisor=self.supervisor.status() if self.supervisor else None,
            hang_timeout_s=worker.hang_timeout_s,
        )

    def _fatal(self, reason: str) -> None:
        self.fatal = reason
        if self.on_fatal is not None:
            self.on_fatal(reason)
