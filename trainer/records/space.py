"""Out of disk space, named as such.

A full filesystem shows up in many disguises: ``OSError(ENOSPC)`` from Python,
``RuntimeError: ... unexpected pos`` from ``torch.save``, an I/O error from safetensors,
"database or disk is full" from SQLite. Each of them means the same thing to an operator
(free some space; nothing is wrong with the data) and the same thing to traind (wait and
try again; never count it against a file). :class:`DiskFullError` is that one meaning,
with the path and the free space in its message.

Torch-free: the main process uses it too.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MIN_FREE_BYTES = 1 << 20
"""Below this much free space a write that failed obscurely is taken for a full disk."""


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
