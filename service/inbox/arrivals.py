"""Arrivals: inbox files seen but not yet taken, and the rules that say when one is ready.

A file is ready when its writer is done with it:

- **renamed** into the inbox (a move from elsewhere, or ``x.jsonl.part`` → ``x.jsonl``):
  ready at once, since a rename is how a writer says it has finished;
- **written in place**, with close events (inotify): ready once closed and unchanged
  (size, mtime, inode) for ``settle_s``; if the close never comes (a hard link, a
  writer that opened it before the watch began) once unchanged for ``fallback_s``;
- **found** by a rescan, or written in place without close events (polling): ready once
  unchanged for ``settle_s``.

"Unchanged" is measured between our own observations, with the monotonic clock, so the
writer's clock and mtime granularity do not matter. The caller adds the last rule: never
a file some process still has open for writing (:mod:`service.inbox.openfiles`).

Only the processing thread touches this object; the watchdog handler hands its notes
over through a queue.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

Signature = tuple[int, int, int]
"""(size, mtime_ns, inode) of a file: equal signatures mean no visible change."""


class Origin(enum.StrEnum):
    """How a file came to our attention (which readiness rule applies)."""

    RENAMED = "renamed"
    WRITTEN = "written"
    FOUND = "found"


def signature(result: os.stat_result) -> Signature:
    """The parts of a stat that change when a file is written or replaced."""
    return (result.st_size, result.st_mtime_ns, result.st_ino)


@dataclass
class Arrival:
    """One file waiting to be taken (mutable: updated as events and observations come)."""

    name: str
    """File name in the inbox top level."""
    origin: Origin
    """Which readiness rule applies."""
    noted_at: float
    """Monotonic time it was first noted."""
    closed: bool = False
    """A close-after-write event arrived since the last write event."""
    seen: Signature | None = None
    """Signature at the latest observation (None before the first)."""
    stable_since: float = 0.0
    """Monotonic time the signature last changed."""

    @property
    def mtime_ns(self) -> int:
        """Last observed modification time (0 before the first observation)."""
        return self.seen[1] if self.seen else 0


class Arrivals:
    """The files waiting to be taken, keyed by name."""

    def __init__(self, *, settle_s: float, fallback_s: float, close_events: bool) -> None:
        self.settle_s = settle_s
        """Quiet time after which a closed (or found) file is taken."""
        self.fallback_s = max(fallback_s, settle_s)
        """Quiet time after which an in-place file whose close never came is taken."""
        self.close_events = close_events
        """Whether the observer reports closes (inotify does, polling does not)."""
        self._waiting: dict[str, Arrival] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, name: str) -> bool:
        return name in self._waiting

    def names(self) -> list[str]:
        """Names waiting, sorted."""
        return sorted(self._waiting)

    def renamed(self, name: str, now: float) -> None:
        """A file was renamed or moved into the inbox."""
        arrival = self._note(name, Origin.RENAMED, now)
        arrival.origin = Origin.RENAMED

    def written(self, name: str, now: float) -> None:
        """A file was created or modified in place."""
        origin = Origin.WRITTEN if self.close_events else Origin.FOUND
        arrival = self._note(name, origin, now)
        arrival.origin = origin
        arrival.closed = False

    def closed(self, name: str, now: float) -> None:
        """A writer closed the file (inotify ``IN_CLOSE_WRITE``)."""
        arrival = self._note(name, Origin.WRITTEN, now)
        arrival.closed = True

    def found(self, name: str, now: float) -> None:
        """A rescan found the file; keeps the rule of a file already waiting."""
        self._note(name, Origin.FOUND, now)

    def forget(self, name: str) -> None:
        """The file went away or was taken."""
        self._waiting.pop(name, None)

    def observe(self, name: str, seen: Signature, now: float) -> None:
        """Record the file's current signature; a change restarts its quiet time."""
        arrival = self._waiting.get(name)
        if arrival is None:
            return
        if arrival.seen != seen:
            if arrival.seen is not None and arrival.origin is Origin.RENAMED:
                # Written to after its rename: wait for it to settle like any other write.
                arrival.origin = Origin.FOUND
            arrival.seen = seen
            arrival.stable_since = now

    def unsettle(self, name: str, now: float) -> None:
        """Wait a full quiet time again (the file changed while it was checked)."""
        arrival = self._waiting.get(name)
        if arrival is not None:
            arrival.origin = Origin.FOUND
            arrival.seen = None
            arrival.stable_since = now

    def ready(self, now: float) -> list[Arrival]:
        """Arrivals whose rule is met, oldest modification first, then by name."""
        due = [a for a in self._waiting.values() if self._is_ready(a, now)]
        return sorted(due, key=lambda a: (a.mtime_ns, a.name))

    def _is_ready(self, arrival: Arrival, now: float) -> bool:
        if arrival.seen is None:
            return False
        if arrival.origin is Origin.RENAMED:
            return True
        quiet = now - arrival.stable_since
        if arrival.origin is Origin.WRITTEN and not arrival.closed:
            return quiet >= self.fallback_s
        return quiet >= self.settle_s

    def _note(self, name: str, origin: Origin, now: float) -> Arrival:
        arrival = self._waiting.get(name)
        if arrival is None:
            arrival = Arrival(name=name, origin=origin, noted_at=now, stable_since=now)
            self._waiting[name] = arrival
        return arrival
