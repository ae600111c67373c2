"""Which processes hold a file open for writing, read from Linux's ``/proc``.

The inbox watcher never takes a drop that some process is still writing: a writer that
pauses longer than the settle time (a stalled download, a slow export) would otherwise
hand traind half a file. ``/proc/<pid>/fd/<n>`` links name each open file and
``/proc/<pid>/fdinfo/<n>`` holds its open flags, so one pass over them answers for every
candidate at once.

Limits: only processes this user may inspect are seen (others' fd folders are
unreadable without privileges), and a writer in another PID namespace (another
container sharing the folder) is invisible. Where ``/proc`` is missing (macOS, Windows)
every answer is empty and the settle time alone decides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def writers_of(path: Path | str, *, proc: Path = PROC) -> list[int]:
    """Process ids that have ``path`` open for writing (``[]`` where ``/proc`` is unavailable)."""
    real = os.path.realpath(path)
    return open_for_writing([path], proc=proc).get(real, [])


def open_for_writing(paths: Iterable[Path | str], *, proc: Path = PROC) -> dict[str, list[int]]:
    """Map the real path of each of ``paths`` that is open for writing to the writers' pids.

    Paths nobody writes to are absent from the answer. One pass over ``/proc`` serves
    all paths, which matters on hosts with thousands of processes.
    """
    targets = {os.path.realpath(p) for p in paths}
    if not targets or not (proc / "self" / "fdinfo").is_dir():
        return {}
    found: dict[str, list[int]] = {}
    try:
        entries = list(os.scandir(proc))
    except OSError:
        log.debug("cannot list %s; no writer check", proc, exc_info=True)
        return {}
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        for target in _written_targets(proc / entry.name, targets):
            found.setdefault(target, []).append(pid)
    return {target: sorted(set(pids)) for target, pids in found.items()}


def _written_targets(process: Path, targets: set[str]) -> list[str]:
    """Those of ``targets`` that one process has open for writing."""
    try:
        fds = [entry.name for entry in (process / "fd").iterdir()]
    except OSError:
        # The process ended, or it belongs to another user: nothing we can learn.
        return []
    hits = []
    for fd in fds:
        try:
            target = str((process / "fd" / fd).readlink())
        except OSError:
            continue
        if target in targets and _is_write_mode(process / "fdinfo" / fd):
            hits.append(target)
    return hits


def _is_write_mode(fdinfo: Path) -> bool:
    """Whether the descriptor described by ``fdinfo`` was opened write-only or read-write."""
    try:
        text = fdinfo.read_text()
    except OSError:
        # Closed between the readlink and now: it no longer writes.
        return False
    for line in text.splitlines():
        if line.startswith("flags:"):
            flags = int(line.split(":", 1)[1].strip(), 8)
            return (flags & os.O_ACCMODE) in _WRITE_MODES
    return False
