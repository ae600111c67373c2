"""One ``traind serve`` per set of folders.

A second service on the same folders would read the first one's heartbeat and say it is
ready, race its watcher over every drop (recording ghost duplicates of files the other
already moved) and restart its worker forever against the lineage lock. So ``traind
serve`` takes an exclusive ``flock`` on each of its folders (state, inbox, checkpoints)
before it starts anything, and a second one is refused at once, naming the process that
holds them. The lock is on the folder itself: no file appears among the drops, and the
kernel drops it when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from service.config.settings import Settings

log = logging.getLogger(__name__)


class ServiceLockedError(RuntimeError):
    """Another ``traind serve`` runs on one of these folders."""


class ServiceLocks:
    """The locks of one running service, on each of its folders."""

    def __init__(self, settings: Settings) -> None:
        paths = settings.paths
        self._folders = [
            ("paths.state", paths.state),
            ("paths.inbox", paths.inbox),
            ("paths.checkpoints", paths.checkpoints),
        ]
        self._held: list[int] = []

    def acquire(self) -> None:
        """Lock every folder, or none; ServiceLockedError names the other process."""
        for key, folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                raise ServiceLockedError(
                    f"another traind serve ({_holder(folder)}) is running with {key} = "
                    f"{folder}; two services on the same folders would race each other's "
                    "watcher and worker: stop the other one first, or give this one its own "
                    "paths"
                ) from None
            self._held.append(fd)

    def release(self) -> None:
        for fd in reversed(self._held):
            os.close(fd)  # closing the descriptor drops the flock
        self._held = []


def _holder(folder: Path) -> str:
    """``pid N: its command line``, from the kernel's table of locks, if it can be read."""
    info = folder.stat()
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return "pid unknown"
    for line in table.splitlines():
        fields = line.split()
        # 1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pid = fields[4]
            return f"pid {pid}" + _command(pid)
    return "pid unknown"


def _command(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return f": {command}" if command else ""
