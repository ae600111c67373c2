"""Exclusive ``flock`` locks on a folder: one trainer per lineage, one service per folder.

Two processes training the same checkpoints folder (an orphaned worker and its
replacement, or ``traind train`` run by hand beside the daemon) would interleave
checkpoints of diverging states: :class:`LineageLock` (``checkpoints/.lock``) keeps all
but one out. Two ``traind serve`` on the same folders would race each other's watcher
and worker: the service takes a :class:`FolderLock` on each of its folders. The kernel
drops a lock when its holder dies, even by SIGKILL, so a crash never leaves a stale lock.

Torch-free: the service's main process takes its locks with it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class LineageLockedError(RuntimeError):
    """Another process holds the lock."""


class FolderLock:
    """An exclusive lock on ``folder/name``, held until released (or the process ends)."""

    def __init__(self, folder: Path, *, name: str, holder: str) -> None:
        self.path = Path(folder) / name
        self.holder = holder
        """What the holder is doing, for the refusal: ``training the lineage in``..."""
        self._fd: int | None = None

    def acquire(self, *, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds; LineageLockedError names the
        process that holds it."""
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
                    raise LineageLockedError(self.refusal(holder)) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def refusal(self, pid: str) -> str:
        return (
            f"another traind process (pid {pid}) is {self.holder} {self.path.parent}; stop it "
            "first, or point the settings at other folders"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class LineageLock(FolderLock):
    """Held for the life of a Trainer."""

    def __init__(self, checkpoints: Path) -> None:
        super().__init__(checkpoints, name=".lock", holder="training the lineage in")

    def refusal(self, pid: str) -> str:
        return (
            f"another traind process (pid {pid}) is training the lineage in "
            f"{self.path.parent}; stop it first, or point paths.checkpoints elsewhere"
        )
