"""The parts of ``traind serve`` that run in its main process, composed.

The main process never imports torch: it runs the inbox watcher and the supervisor
(which starts the worker as a child process), and the API reads the ledger. The API's
lifespan calls :meth:`Daemon.start` and :meth:`Daemon.stop`. Under systemd the daemon
also reports to the service manager (:mod:`service.daemon.readiness`: READY, STATUS, watchdog
pings and STOPPING).

The daemon owns the settings in force (:attr:`Daemon.in_force`): it writes them for the
worker at start (:mod:`service.config.in_force`), and its reloader changes them on SIGHUP
(:mod:`service.daemon.reloader`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.config.in_force import InForce, in_force_path, next_revision, write_in_force
from service.config.settings import Settings
from service.daemon.readiness import Readiness
from service.daemon.reloader import Reloader
from service.daemon.status import SchemaCheck, read_status, worker_not_ready
from service.daemon.supervisor import Supervisor
from service.inbox.inventory import take_inventory
from service.inbox.watcher import InboxWatcher
from service.ledger import Ledger
from trainer.records.events import EventLog, utc_now
from trainer.records.storage import DiskFullError

log = logging.getLogger(__name__)


class Daemon:
    """Ledger, watcher and supervisor with one start and one stop."""

    def __init__(self, settings: Settings, *, start_worker: bool = True) -> None:
        path = in_force_path(settings)
        self.in_force = InForce(
            settings=settings, revision=next_revision(path), loaded_at=utc_now()
        )
        """The settings in force: replaced whole by an accepted reload."""
        self.ledger = Ledger.open(
            settings.database_url(), busy_timeout_ms=settings.ledger.busy_timeout_ms
        )
        self.events = EventLog(settings.run_paths().events)
        self.watcher = InboxWatcher(
            settings.paths.inbox,
            ledger=self.ledger,
            settings=settings.watcher,
            events=self.events,
            on_queued=self.wake_worker,
        )
        self.supervisor = (
            Supervisor(settings, ledger=self.ledger, events=self.events, on_fatal=self._fatal)
            if start_worker
            else None
        )
        self.readiness = Readiness(settings, ledger=self.ledger, supervisor=self.supervisor)
        # Those above read only sections a reload never changes (service.config.reload).
        self.reloader = Reloader(
            current=lambda: self.in_force, put=self._put_in_force, path=path, events=self.events
        )
        self.schema = SchemaCheck(self.ledger)
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self.on_fatal = None

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self.in_force.settings

    def start(self) -> None:
        self.settings.paths.checkpoints.mkdir(parents=True, exist_ok=True)
        # Before the worker starts: it loads its settings from this file.
        write_in_force(self.reloader.path, self.in_force)
        log.info(
            "settings in force: revision %d, from %s",
            self.in_force.revision,
            self.settings.config_file or "the environment and defaults",
        )
        self._forget_old_workers()
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
        self.reloader.start()
        log.info(
            "traind is watching %s; checkpoints in %s; ledger %s",
            self.settings.paths.inbox,
            self.settings.paths.checkpoints,
            self.settings.database_url(),
        )

    def wake_worker(self) -> None:
        """Something to do (a file queued, a request): an idle or paused worker looks at the
        ledger now rather than at its next poll (``service.signals.Wakeup``)."""
        if self.supervisor is not None:
            self.supervisor.wake()

    def stop(self) -> None:
        """Stop the worker first (it checkpoints), then the watcher; idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.readiness.stopping()  # systemd: STOPPING=1, and time for the final checkpoint
        self.reloader.stop()
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

    def _forget_old_workers(self) -> None:
        """Each worker reports under its own id, so every restart leaves a row: drop those
        of long-gone workers (the newest stay, so readiness knows the last heartbeat)."""
        try:
            removed = self.ledger.prune_workers()
        except (DiskFullError, SQLAlchemyError) as exc:
            # Housekeeping: never a reason not to start.
            log.warning("could not forget old workers' heartbeats: %s", exc)
            return
        if removed:
            log.info("forgot the heartbeats of %d old worker(s)", removed)

    def readiness_checks(self) -> dict[str, Callable[[], str | None]]:
        """The checks of /readyz by name: each returns None when it passes, else why not
        (and may raise, e.g. when the ledger does not answer)."""
        return {
            "ledger": self._ledger_answers,
            "schema": self._schema_at_head,
            "worker": self._worker_ready,
            "inbox_watcher": self._watcher_running,
            "stopping": self._not_stopping,
        }

    def _ledger_answers(self) -> str | None:
        self.ledger.counts_by_state()  # a plain read: it raises if the database does not answer
        return None

    def _schema_at_head(self) -> str | None:
        if self.schema.at_head():
            return None
        return "the ledger schema is not at this traind's newest migration; run traind migrate"

    def _worker_ready(self) -> str | None:
        worker = self.ledger.worker_status()
        return worker_not_ready(worker, heartbeat_s=self.settings.worker.heartbeat_s)

    def _watcher_running(self) -> str | None:
        return None if self.watcher.health()["running"] else "the inbox watcher is not running"

    def _not_stopping(self) -> str | None:
        if self.fatal:
            return f"stopping after a fatal error: {self.fatal}"
        return "shutting down" if self.stopping.is_set() else None

    def _put_in_force(self, in_force: InForce) -> None:
        # One assignment: every reader sees the old settings or the new ones, whole.
        self.in_force = in_force

    def _fatal(self, reason: str) -> None:
        self.fatal = reason
        if self.on_fatal is not None:
            self.on_fatal(reason)
