"""Disk space: what the worker does while a disk is full, and what the service reports.

A full disk is not the data's fault and not a crash. The worker stops where it is (at an
optimizer-step boundary, everything in memory), reports ``error`` with the reason in its
heartbeat, keeps its claim on the file, and tries the write again every
``worker.disk_retry_s`` until it succeeds; then it carries on as if nothing happened.
Nothing counts against the file and no step is lost.

When the state filesystem is the full one, the worker cannot even write its heartbeat.
So the main process also looks at the free space itself (:func:`space_problems`, one
``statvfs`` per folder) and ``/v1/status`` reports ``error`` from that alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from trainer.records.checkpoints import MANIFEST, STEP_DIR
from trainer.records.storage import DiskFullError, describe, free_bytes

log = logging.getLogger(__name__)

STATE_FLOOR_BYTES = 16 * 2**20
"""Free space under which the state folder (ledger, event log, cache) counts as full."""


class StopWaitingError(Exception):
    """Asked to stop while waiting for disk space: what is not saved is lost (it is trained
    again from the last checkpoint, exactly as after a crash)."""


class SpaceWait:
    """Waits out a full disk, reporting it; one per worker."""

    def __init__(
        self,
        *,
        retry_s: float,
        stop: Callable[[], bool],
        report: Callable[[str | None], None],
        events: Callable[[str, dict], None],
    ) -> None:
        self.retry_s = retry_s
        self.stop = stop
        self.report = report
        """Called with the problem while waiting (None once writes succeed again)."""
        self.events = events
        self.problem: str | None = None

    def __call__(self, exc: DiskFullError) -> None:
        """Wait ``retry_s`` (reporting ``exc``), then return so the write is tried again;
        StopWaitingError if a stop is asked meanwhile."""
        message = f"{exc} (training waits, retrying every {self.retry_s:g}s)"
        if self.problem != message:
            if self.problem is None:
                log.error("%s", message)
                self._emit("disk_full", {"path": str(exc.path), "reason": message})
            else:
                log.debug("%s", message)  # the free bytes changed; the outage goes on
            self.problem = message
        deadline = time.monotonic() + self.retry_s
        while not self.stop():
            self.report(message)
            if time.monotonic() >= deadline:
                return
            time.sleep(min(0.5, self.retry_s))
        raise StopWaitingError(message)

    def recovered(self) -> None:
        """A write went through: if we were waiting, say that space is back."""
        if self.problem is None:
            return
        log.warning("disk space is back; training goes on where it stopped")
        self.problem = None
        self.report(None)
        self._emit("disk_space_recovered", {})

    def _emit(self, event: str, fields: dict) -> None:
        # On a full event log's disk the log line and the heartbeat say it instead.
        with contextlib.suppress(DiskFullError):
            self.events(event, fields)


def space_problems(*, checkpoints: Path, state: Path) -> list[str]:
    """What lacks space now: the state folder under its floor, or the checkpoints folder
    under the size of its newest checkpoint (the next one needs as much)."""
    problems = []
    free = free_bytes(state)
    if free is not None and free < STATE_FLOOR_BYTES:
        problems.append(
            f"out of disk space: paths.state ({state}) has {describe(free)} free, so the "
            "ledger and the event log cannot be written; free some space there"
        )
    need = _newest_checkpoint_bytes(checkpoints)
    free = free_bytes(checkpoints)
    if need and free is not None and free < need:
        problems.append(
            f"out of disk space: paths.checkpoints ({checkpoints}) has {describe(free)} free "
            f"and the next checkpoint needs about {describe(need)}; free some space there "
            "(e.g. old checkpoints under rolled-back/ or retired/)"
        )
    return problems


def _newest_checkpoint_bytes(root: Path) -> int:
    """Sizes of the newest step checkpoint's files, from its manifest (0 if none)."""
    try:
        steps = sorted(
            (e.name for e in root.iterdir() if STEP_DIR.match(e.name) and e.is_dir()),
            reverse=True,
        )
    except OSError:
        return 0
    for name in steps:
        try:
            files = json.loads((root / name / MANIFEST).read_text(encoding="utf-8"))["files"]
            return sum(int(entry["size"]) for entry in files.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return 0
