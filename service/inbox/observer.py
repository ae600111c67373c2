"""The watchdog side of the inbox watcher: which observer to run, and a handler that only
takes notes.

The handler runs in watchdog's thread. An exception there would end that thread (and
with it every later event), and slow work would delay the events behind it, so it only
appends a :class:`Note` to a queue and wakes the processing thread.

inotify is used on Linux, with *full* move events so that a file moved in from outside
the inbox is reported as a move (ready at once) rather than a creation. When inotify
cannot be had (the per-user watch or instance limit is reached, as happens in busy
containers), or ``watcher.polling`` asks for it, a ``PollingObserver`` scans the folder.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from service.inbox.arrivals import Arrivals

log = logging.getLogger(__name__)

LINUX = sys.platform.startswith("linux")
"""inotify, and with it close-after-write events, is available."""

# Not opens, reads or closes without writing: traind's own reads would flood the queue.
# Folders too: a folder dropped into the inbox is rejected whole, and should be seen at once
# rather than at the next rescan (changes inside it show in its mtime, re-stat'ed anyway).
EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class Note(NamedTuple):
    """One watchdog event, as the handler saw it."""

    kind: str
    """watchdog's event type: created, modified, closed, moved or deleted."""
    src: str
    """Path the event is about (the old path of a move; empty if it came from outside)."""
    dest: str
    """New path of a move (empty otherwise, or if it left the watched folder)."""
    is_directory: bool
    """About a directory."""
    at: float
    """Monotonic time it was noted."""


class NoteTaker(FileSystemEventHandler):
    """Queues a :class:`Note` per event and wakes the processing thread; nothing more."""

    def __init__(self, notes: deque[Note], wake: threading.Event) -> None:
        self._notes = notes
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._notes.append(
            Note(
                event.event_type,
                os.fsdecode(event.src_path),
                os.fsdecode(event.dest_path),
                event.is_directory,
                time.monotonic(),
            )
        )
        self._wake.set()


def start_observer(
    folder: Path, handler: FileSystemEventHandler, *, polling: bool, poll_s: float
) -> tuple[BaseObserver, bool]:
    """Start watching ``folder`` (top level only); return the observer and whether it polls."""
    if not polling:
        try:
            return _native_watch(folder, handler), False
        except OSError as exc:
            log.error(
                "cannot watch %s with file system events (%s); polling it every %.1fs instead "
                "(raise fs.inotify.max_user_watches / max_user_instances to get events back)",
                folder,
                exc,
                poll_s,
            )
    observer = PollingObserver(timeout=poll_s)
    _watch(observer, folder, handler)
    return observer, True


def is_alive(observer: BaseObserver) -> bool:
    """Whether the observer and all its emitters still run."""
    return observer.is_alive() and all(emitter.is_alive() for emitter in observer.emitters)


def stop_observer(observer: BaseObserver) -> None:
    """Stop and join ``observer``, logging (never raising) what goes wrong."""
    try:
        observer.stop()
        if observer.is_alive():
            observer.join()
    except Exception:
        log.exception("stopping the inbox observer failed")


def _native_watch(folder: Path, handler: FileSystemEventHandler) -> BaseObserver:
    if LINUX:
        from watchdog.observers.inotify import InotifyObserver

        observer: BaseObserver = InotifyObserver(generate_full_events=True)
    else:
        observer = Observer()
    try:
        _watch(observer, folder, handler)
    except BaseException:
        stop_observer(observer)
        raise
    return observer


def _watch(observer: BaseObserver, folder: Path, handler: FileSystemEventHandler) -> None:
    observer.schedule(handler, str(folder), recursive=False, event_filter=EVENTS)
    observer.start()


def apply_notes(
    notes: deque[Note], arrivals: Arrivals, *, drop_name: Callable[[Path], str | None]
) -> None:
    """Take every note off ``notes`` (the processing thread's side) and tell ``arrivals``
    what it says about each top-level name (``drop_name``: None for anything else)."""

    def top_level(raw: str) -> str | None:
        return drop_name(Path(raw)) if raw else None

    def gone(raw: str) -> None:
        name = top_level(raw)
        if name is not None:
            arrivals.forget(name)

    while notes:
        note = notes.popleft()
        if note.kind == "moved":
            gone(note.src)
            name = top_level(note.dest)
            if name is not None:
                arrivals.renamed(name, note.at)
            continue
        if note.kind == "deleted":
            gone(note.src)
            continue
        name = top_level(note.src)
        if name is None:
            continue
        if note.is_directory:
            # No close event ever comes for a folder: it is taken once its listing (its
            # mtime) has been still for the settle time.
            arrivals.found(name, note.at)
        elif note.kind == "closed":
            arrivals.closed(name, note.at)
        else:
            arrivals.written(name, note.at)
