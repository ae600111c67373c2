"""One trainer per lineage: an exclusive ``flock`` on ``checkpoints/.lock``.

Two processes training the same checkpoints folder (an orphaned worker and its
replacement, or ``traind train`` run by hand beside the daemon) would interleave
checkpoints of diverging states. The kernel drops the lock when its holder dies, even
by SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class LineageLockedError(RuntimeError):
    """Another process holds the lineage."""


class LineageLock:
    """Held for the life of a Trainer."""

    def __init__(self, checkpoints: Path) -> None:
        self.path = checkpoints / ".lock"
        self._fd: int | None = None

    def acquire(self, *, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds; LineageLockedError names the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise LineageLockedError(
                        f"another traind process (pid {holder}) is training the lineage in "
                        f"{self.path.parent}; stop it first, or point paths.checkpoints elsewhere"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
