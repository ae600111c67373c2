"""Bytes on disk: writes that survive a crash, content hashes, and a full disk named as such.

Durability: a file is fsynced before it is renamed into place, and its folder after, so a
power cut leaves either the old state or the new one (ARCHITECTURE.md rule 8).

A full filesystem shows up in many disguises: ``OSError(ENOSPC)`` from Python,
``RuntimeError: ... unexpected pos`` from ``torch.save``, an I/O error from safetensors,
"database or disk is full" from SQLite. Each of them means the same thing to an operator
(free some space; nothing is wrong with the data) and the same thing to traind (wait and
try again; never count it against a file). :class:`DiskFullError` is that one meaning,
with the path and the free space in its message.

Torch-free: the main process and the API use it too.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 4 * 2**20
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MIN_FREE_BYTES = 1 << 20
"""Below this much free space a write that failed obscurely is taken for a full disk."""


def file_sha256(path: Path | str) -> str:
    """sha256 hex of a file's bytes, read in chunks (never the whole file in memory): a
    drop's identity in the lineage and a checkpoint file's in its manifest."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_durably(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` and fsync it (the caller renames it into place)."""
    with path.open("wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes the renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder_quietly(folder: Path) -> None:
    """fsync a folder after a rename in it, where a failure is not worth failing the rename
    for (some filesystems cannot fsync a folder): it is logged, not raised."""
    try:
        fsync_path(folder)
    except OSError:
        log.debug("cannot fsync %s", folder, exc_info=True)


class DiskFullError(OSError):
    """A write failed, or would fail, for want of space on the filesystem of ``path``."""

    def __init__(self, message: str, *, path: Path | str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.path = Path(path)
        self.message = message

    def __str__(self) -> str:
        return self.message


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use where ``path`` is (its nearest existing
    folder), or None if that cannot be read."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def ensure_space(path: Path, *, need: int, what: str) -> None:
    """Raise DiskFullError, before writing anything, if ``what`` (about ``need`` bytes)
    cannot fit where ``path`` is. Cheap: one ``statvfs``."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise DiskFullError(
            f"out of disk space: {what} needs about {describe(need)} in {path}, and its "
            f"filesystem has {describe(free)} free; free some space",
            path=path,
        )


def as_disk_full(exc: BaseException, *, path: Path, what: str) -> DiskFullError | None:
    """The DiskFullError a failed write really was, or None if it was something else.

    ``OSError`` with ENOSPC or EDQUOT is one; any other error (torch's and safetensors'
    writers wrap the OS error in their own) is one when the filesystem is nearly full.
    """
    if isinstance(exc, DiskFullError):
        return exc
    spaceless = isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS
    free = free_bytes(path)
    if not spaceless and (free is None or free >= MIN_FREE_BYTES):
        return None
    return DiskFullError(
        f"out of disk space: writing {what} in {path} failed ({type(exc).__name__}: "
        f"{os.strerror(errno.ENOSPC) if spaceless else exc}) with {describe(free)} free; "
        "free some space",
        path=path,
    )
