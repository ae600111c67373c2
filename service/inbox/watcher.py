"""The inbox watcher: notices drops, waits until each is complete, and hands it to intake.

Two threads of its own, plus watchdog's:

- the watchdog observer (:mod:`service.inbox.observer`: inotify on Linux, polling when
  ``watcher.polling`` is set or inotify cannot be had) on the inbox top level only; its
  handler only notes what happened and when, so it can neither block nor fail;
- one processing thread that turns those notes into :class:`service.inbox.arrivals.Arrivals`,
  re-stats waiting files, takes the ready ones (see :mod:`service.inbox.arrivals` for the
  rules, and never one still open for writing), rescans the inbox every
  ``rescan_interval_s`` to catch missed events, and restarts a dead observer.

Each file is checked inside its own ``try``: a failure is logged with its traceback and
the file stays where it is, to be retried at the next rescan; a file whose check keeps
failing is rejected with the error after :data:`MAX_ATTEMPTS`. The checked files are
recorded a batch at a time (:class:`service.inbox.filing.BatchLimits`: one ledger
transaction for a burst, not one per file); a batch that cannot be recorded stays in the
inbox for the next rescan, whole. The loop itself never dies.
:meth:`InboxWatcher.process_ready` is that loop's step, public so tests can drive it
deterministically.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.observers.api import BaseObserver

from service.config.sections import WatcherSection
from service.inbox.arrivals import Arrival, Arrivals, Origin, signature
from service.inbox.filing import Batch, BatchLimits
from service.inbox.intake import FileChangedError, Intake, Verdict
from service.inbox.layout import OWN_FOLDERS, InboxLayout, is_ignored
from service.inbox.names import printable_name
from service.inbox.observer import (
    LINUX,
    Note,
    NoteTaker,
    apply_notes,
    is_alive,
    start_observer,
    stop_observer,
)
from service.inbox.openfiles import open_for_writing
from service.ledger.records import FileRecord, FileState
from trainer.records.events import EventLog

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Failed checks of one file before it is rejected with the error."""
HELD_RECHECK_S = 1.0
"""How often a file found open for writing is looked at again (each look scans /proc)."""
IDLE_TICK_S = 1.0
"""Longest sleep of the processing thread (it also refreshes the health timestamp)."""
_RETRY_LATER = object()


class InboxWatcher:
    """Watches the inbox top level and records every complete drop in the ledger."""

    def __init__(
        self,
        inbox: Path,
        *,
        ledger: Any,
        settings: WatcherSection,
        events: EventLog,
        on_queued: Callable[[], None] | None = None,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        self.layout = InboxLayout(Path(inbox).absolute())
        self.settings = settings
        self.on_queued = on_queued
        """Called after a batch that queued a drop is filed (traind serve wakes its worker)."""
        self.batch_limits = batch_limits or BatchLimits()
        """How many checked drops one ledger transaction records."""
        self.intake = Intake(self.layout, ledger=ledger, settings=settings, events=events)
        self._arrivals = Arrivals(
            settle_s=settings.settle_s,
            fallback_s=settings.rescan_interval_s,
            close_events=LINUX and not settings.polling,
        )
        self._notes: deque[Note] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._failures: dict[str, int] = {}
        self._held: dict[str, float] = {}
        self._next_rescan = 0.0
        self._last_loop_at: float | None = None
        self._observer_restarts = 0
        self._polling = settings.polling

    @property
    def inbox(self) -> Path:
        """The watched folder."""
        return self.layout.root

    def start(self) -> None:
        """Create the inbox folders, start watching, find the files already there."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the inbox watcher is already running")
            self.layout.create()
            self._stopping.clear()
            # Observer first, then the rescan: a file dropped in between is seen by one of them.
            self._observer = self._start_observer()
            self._repair_paths()
            self.rescan()
            self._thread = threading.Thread(target=self._run, name="traind-inbox", daemon=True)
            self._thread.start()
        log.info(
            "watching %s (%s, settle %.1fs, rescan every %.0fs)",
            self.inbox,
            "polling" if self._polling else "events",
            self.settings.settle_s,
            self.settings.rescan_interval_s,
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop the processing thread and the observer and wait for both (idempotent).

        A file being validated is finished first, so ``timeout`` may be needed for huge ones.
        """
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the inbox thread is still checking a file; not waiting for it")
        # Without the lock: a thread still checking a huge file holds it.
        observer, self._observer = self._observer, None
        if observer is not None:
            stop_observer(observer)

    def rescan(self) -> list[str]:
        """Note every candidate drop at the inbox top level; return the names newly noted.

        A drop is anything there but traind's own folders and ignored names: a folder is
        one too, to be rejected (only the top level receives drops).
        """
        with self._lock:
            if self.intake.filing.paths_stale:
                self._repair_paths()
            now = time.monotonic()
            self._next_rescan = now + self.settings.rescan_interval_s
            present = set()
            added = []
            with os.scandir(self.inbox) as entries:
                for entry in entries:
                    if is_ignored(entry.name) or (entry.name in OWN_FOLDERS and _is_dir(entry)):
                        continue
                    present.add(entry.name)
                    if entry.name not in self._arrivals:
                        self._arrivals.found(entry.name, now)
                        added.append(entry.name)
                        self._look_at(entry, now)
            for name in {*self._arrivals.names(), *self._failures, *self._held} - present:
                self._forget(name)
            if added:
                log.info("rescan found %d file(s) in %s: %s", len(added), self.inbox, sorted(added))
            return sorted(added)

    def process_ready(self, now: float | None = None) -> list[FileRecord]:
        """Take every file that is ready at ``now`` (monotonic clock); return their records."""
        with self._lock:
            now = time.monotonic() if now is None else now
            apply_notes(self._notes, self._arrivals, drop_name=self.layout.drop_name)
            self._observe(now)
            ready = [a for a in self._arrivals.ready(now) if self._held.get(a.name, 0.0) <= now]
            if not ready:
                return []
            writers = open_for_writing([self.inbox / a.name for a in ready])
            known = self._recorded_at([a for a in ready if a.origin is Origin.FOUND])
            taken: list[FileRecord] = []
            batch = Batch(self.batch_limits)
            for arrival in ready:
                if self._stopping.is_set():
                    break  # shutting down: the rest wait for the next start
                path = self.inbox / arrival.name
                pids = writers.get(os.path.realpath(path))
                if pids:
                    if arrival.name not in self._held:
                        log.info(
                            "%s is still open for writing (pid %s); waiting", _shown(path), pids
                        )
                    self._held[arrival.name] = now + HELD_RECHECK_S
                    continue
                self._held.pop(arrival.name, None)
                if batch.due_before(arrival.seen[0] if arrival.seen else 0):
                    taken.extend(self._file(batch.take()))
                outcome = self._check(arrival, path, now, known=known)
                if isinstance(outcome, FileRecord):
                    taken.append(outcome)
                elif isinstance(outcome, Verdict) and batch.add(outcome):
                    taken.extend(self._file(batch.take()))
            taken.extend(self._file(batch.take()))
            return taken

    def health(self) -> dict[str, Any]:
        """For a readiness probe: is everything running, when did the loop last turn."""
        observer = self._observer
        thread = self._thread
        last = self._last_loop_at
        return {
            "running": thread is not None and thread.is_alive(),
            "observer_alive": observer is not None and is_alive(observer),
            "mode": "polling" if self._polling else "events",
            "inbox": str(self.inbox),
            "last_loop_at": last,
            "last_loop_age_s": None if last is None else max(0.0, time.time() - last),
            "files_pending": len(self._arrivals) + len(self._notes),
            "observer_restarts": self._observer_restarts,
        }

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._keep_observer()
                if time.monotonic() >= self._next_rescan:
                    self.rescan()
                self.process_ready()
                self._last_loop_at = time.time()
            except Exception:
                log.exception("the inbox loop failed; it carries on")
            self._wake.wait(self._tick())
            self._wake.clear()

    def _tick(self) -> float:
        if self._arrivals:
            return min(0.25, max(0.02, self.settings.settle_s / 4))
        return max(0.0, min(IDLE_TICK_S, self._next_rescan - time.monotonic()))

    def _recorded_at(self, found: list[Arrival]) -> dict[str, FileRecord] | None:
        # Only a file found by a rescan can be a move a crash interrupted; one that a live
        # event announced is new. One query for them all, not one per file.
        if not found:
            return {}
        try:
            return self.intake.recorded_at(self.inbox / a.name for a in found)
        except Exception:
            log.exception("could not look up the files a rescan found; one by one instead")
            return None

    def _check(
        self, arrival: Arrival, path: Path, now: float, *, known: dict[str, FileRecord] | None
    ) -> FileRecord | Verdict | None:
        """A file found finished (a move a crash interrupted), a verdict to record, or
        ``None`` when there is nothing to record now."""
        name = arrival.name
        try:
            if arrival.origin is Origin.FOUND:
                record = self.intake.finish_interrupted(path, known=known)
                if record is not None:
                    self._forget(name)
                    return record
            verdict = self._inspect(name, path)
        except FileChangedError:
            log.info("%s changed while it was checked; waiting for it to settle", _shown(path))
            self._arrivals.unsettle(name, now)
            return None
        except Exception:
            # Not the file's fault (the ledger, the disk): retried without limit.
            log.exception(
                "could not record %s; it stays in the inbox until the next rescan", _shown(path)
            )
            self._arrivals.forget(name)
            return None
        if verdict is _RETRY_LATER:
            return None
        if verdict is None:
            self._forget(name)
            return None
        assert isinstance(verdict, Verdict)
        return verdict

    def _file(self, batch: list[Verdict]) -> list[FileRecord]:
        """Record a batch of verdicts in one ledger transaction, then move and announce
        them (:mod:`service.inbox.filing`); the records of those filed."""
        if not batch:
            return []
        try:
            filed = self.intake.commit_all(batch)
        except Exception:
            # Nothing was recorded: the next rescan checks them all again.
            log.exception(
                "could not record %d file(s) (%s); they stay in the inbox until the next rescan",
                len(batch),
                ", ".join(_shown(v.path) for v in batch[:5]),
            )
            for verdict in batch:
                self._arrivals.forget(verdict.path.name)
            return []
        unplaced = {path.name for path in filed.unplaced}
        for verdict in batch:
            if verdict.path.name in unplaced:
                self._arrivals.forget(verdict.path.name)  # the rescan finishes its move
            else:
                self._forget(verdict.path.name)
        if self.on_queued is not None and any(
            record.state is FileState.QUEUED for record in filed.records
        ):
            self.on_queued()  # at once: a burst's first batch trains meanwhile
        return list(filed.records)

    def _inspect(self, name: str, path: Path) -> Verdict | object | None:
        try:
            return self.intake.inspect(path)
        except FileChangedError:
            raise
        except Exception as exc:
            attempts = self._failures.get(name, 0) + 1
            self._failures[name] = attempts
            if attempts < MAX_ATTEMPTS:
                log.exception(
                    "checking %s failed (attempt %d of %d); it stays in the inbox and is "
                    "retried at the next rescan",
                    _shown(path),
                    attempts,
                    MAX_ATTEMPTS,
                )
                self._arrivals.forget(name)
                return _RETRY_LATER
            log.exception("checking %s failed %d times; rejecting it", _shown(path), attempts)
            return self.intake.unreadable(path, error=exc, attempts=attempts)

    def _repair_paths(self) -> None:
        # Files a crash left moved but recorded at the top level (service.inbox.filing).
        try:
            repaired = self.intake.filing.repair_paths()
        except Exception:
            log.exception("could not repair the paths of files moved before a crash")
            return
        if repaired and self.on_queued is not None:
            self.on_queued()

    def _observe(self, now: float) -> None:
        for name in self._arrivals.names():
            try:
                result = os.lstat(self.inbox / name)
            except FileNotFoundError:
                log.debug("%s left the inbox before it was taken", printable_name(name))
                self._forget(name)
                continue
            self._arrivals.observe(name, signature(result), now)

    def _look_at(self, entry: os.DirEntry[str], now: float) -> None:
        # The first look starts the quiet time, so a rescan followed by process_ready(later)
        # takes a settled file in one step.
        result = _stat(entry)
        if result is not None:
            self._arrivals.observe(entry.name, signature(result), now)

    def _forget(self, name: str) -> None:
        self._arrivals.forget(name)
        self._failures.pop(name, None)
        self._held.pop(name, None)

    def _start_observer(self) -> BaseObserver:
        # The poll interval bounds how late a change is seen; keep it under the settle time.
        poll_s = min(1.0, max(0.1, self.settings.settle_s / 2))
        observer, self._polling = start_observer(
            self.inbox,
            NoteTaker(self._notes, self._wake),
            polling=self.settings.polling,
            poll_s=poll_s,
        )
        self._arrivals.close_events = LINUX and not self._polling
        return observer

    def _keep_observer(self) -> None:
        with self._lock:
            observer = self._observer
            if observer is None or self._stopping.is_set():
                return
            if is_alive(observer) and self.inbox.is_dir():
                return
            log.error("the inbox observer stopped; restarting it and rescanning %s", self.inbox)
            self._observer_restarts += 1
            stop_observer(observer)
            self.layout.create()
            self._observer = self._start_observer()
            self.rescan()


def _shown(path: Path) -> str:
    # A name that is not UTF-8 would break a log handler that writes strict UTF-8.
    return printable_name(str(path))


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
