"""SIGHUP to ``traind serve``: the settings file read again, and what may change while the
service runs put in force (ARCHITECTURE.md section 2; :mod:`service.config.reload`).

The signal handler only sets a flag; the reloader's own thread does the work, so a
reload never runs inside uvicorn's event loop nor in the middle of anything the main
thread was doing. An accepted reload is written to ``settings-in-force.json`` under a new
revision (:mod:`service.config.in_force`) before the main process uses it: the worker
takes it up from the next file, and a worker restarted later starts with it. Every
reload is logged key by key and recorded as an event: ``settings_reloaded``, or
``settings_reload_failed`` when the file was refused whole and nothing changed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from service.config.in_force import InForce, write_in_force
from service.config.reload import reread
from service.config.settings import SettingsError
from trainer.records.events import EventLog, utc_now
from trainer.records.storage import DiskFullError

log = logging.getLogger(__name__)


class Reloader:
    """Reloads the settings when asked, from a thread of its own."""

    def __init__(
        self,
        *,
        current: Callable[[], InForce],
        put: Callable[[InForce], None],
        path: Path,
        events: EventLog,
    ) -> None:
        self.current = current
        """The settings in force now."""
        self.put = put
        """Puts new settings in force in the main process (after they are written)."""
        self.path = path
        self.events = events
        self._asked = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def install(self) -> Any:
        """Make SIGHUP ask for a reload (main thread only); the handler it replaces."""
        return signal.signal(signal.SIGHUP, self.ask)

    def ask(self, _signum: int | None = None, _frame: FrameType | None = None) -> None:
        """The signal handler: only a flag."""
        self._asked.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traind-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._asked.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._asked.wait()
            if self._stopping.is_set():
                return
            self._asked.clear()
            try:
                self.reload()
            except Exception:  # a reload must never take the service down
                log.exception("reloading the settings failed; the settings in force stay")

    def reload(self) -> InForce:
        """Read the settings file again and put what may change in force; the settings in
        force afterwards."""
        now = self.current()
        try:
            result = reread(now.settings)
        except SettingsError as exc:
            return self._refuse(now, problems=list(exc.problems))
        accepted, refused = result.log_lines()
        if result.changed:
            new = InForce(settings=result.settings, revision=now.revision + 1, loaded_at=utc_now())
            try:
                write_in_force(self.path, new)
            except OSError as exc:
                return self._refuse(now, problems=[f"cannot write {self.path}: {exc}"])
            self.put(new)
            now = new
        for line in accepted:
            log.info("%s", line)
        for line in refused:
            log.warning("%s", line)
        if not (result.changed or result.refused):
            log.info("settings reloaded from %s: nothing changed", now.settings.config_file)
        self._emit("settings_reloaded", revision=now.revision, **result.event_fields())
        return now

    def _refuse(self, now: InForce, *, problems: list[str]) -> InForce:
        log.error(
            "settings reload refused, the settings in force stay (revision %d): %s",
            now.revision,
            "; ".join(problems),
        )
        self._emit("settings_reload_failed", revision=now.revision, error="\n".join(problems))
        return now

    def _emit(self, event: str, **fields: Any) -> None:
        try:
            self.events.emit(event, **fields)
        except DiskFullError as exc:
            log.error("could not record %s: %s", event, exc)
