"""Names of dropped files: as text the ledger can hold, and as files the folders can hold.

A name on disk is bytes; the ledger, the event log and the API hold text. A name that is
not valid UTF-8 is recorded under :func:`printable_name` (``\\xNN`` escapes), and the file
is moved under that name too, so what the ledger says is where the file is. Filed names
carry the ledger id (``<id:06d>-<name>``) and must fit the filesystem's name limit beside
their ``.reason.txt`` (:func:`filed_name`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

REASON_SUFFIX = ".reason.txt"
MAX_PRINTABLE_NAME_BYTES = 200
"""Longest printable form of a non-UTF-8 name: escapes make a name up to four times longer,
and ``<id>-<name>.reason.txt`` must still fit the usual 255-byte limit of a file name."""


def is_utf8(name: str) -> bool:
    """Whether a file name (as ``os`` decodes it) was valid UTF-8 on disk.

    Bytes that are not UTF-8 come back from ``os`` as lone surrogates, which no UTF-8
    encoder (SQLite, JSON, HTTP) accepts.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """``name`` as printable UTF-8 text, for the ledger, the logs and the rejected/ folder.

    A valid UTF-8 name comes back unchanged. Otherwise each byte that is not UTF-8, and
    each control character, is written as a ``\\xNN`` escape, and an escaped name longer
    than :data:`MAX_PRINTABLE_NAME_BYTES` keeps its start and its end around ``...``.
    The result depends on the name alone: a crash between the ledger write and the move
    finds the record again by it.
    """
    if is_utf8(name):
        return name
    raw = name.encode("utf-8", "surrogateescape") if _escaped_bytes_only(name) else None
    if raw is None:
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        text = raw.decode("utf-8", "backslashreplace")
    text = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)
    return _shortened(text, MAX_PRINTABLE_NAME_BYTES)


def recorded_path(path: Path) -> str:
    """The text the ledger records for a file at ``path`` (see :func:`printable_name`)."""
    return str(path.with_name(printable_name(path.name)))


def undecodable_reason(name: str) -> str:
    shown = printable_name(name)
    where = ""
    if _escaped_bytes_only(name):
        raw = name.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}; "
    return (
        f"{shown}: the file name is not valid UTF-8 ({where}each such byte is shown here as "
        "\\xNN); rename it with a UTF-8 name and drop it again"
    )


def _escaped_bytes_only(name: str) -> bool:
    """Whether every surrogate in ``name`` stands for one undecodable byte (as ``os`` makes)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in name)


def _shortened(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    tail = text[-24:]
    room = limit - len(tail.encode("utf-8")) - len("...")
    return encoded[:room].decode("utf-8", "ignore") + "..." + tail


MAX_NAME_BYTES = 255
"""The longest file name most filesystems take (ext4, xfs, tmpfs, btrfs)."""


def filed_name(file_id: int, name: str) -> str:
    """``<id:06d>-<name>``, shortened when it and its ``.reason.txt`` would not fit in a
    file name: the stem is cut and marked with a hash of the whole name, the data
    extension kept, so the name stays unique and one the worker reads."""
    filed = f"{file_id:06d}-{name}"
    # The reason file is written through a hidden temporary: ".<name>.reason.txt.tmp".
    extra = len(f".{REASON_SUFFIX}.tmp")
    if len(filed.encode()) + extra <= MAX_NAME_BYTES:
        return filed
    suffix = next((s for s in (".jsonl.gz", ".jsonl") if name.endswith(s)), "")
    stem = filed[: len(filed) - len(suffix)] if suffix else filed
    mark = "~" + hashlib.sha256(name.encode(errors="surrogateescape")).hexdigest()[:8]
    room = MAX_NAME_BYTES - extra - len((mark + suffix).encode())
    cut = stem.encode()[:room].decode(errors="ignore")
    return cut + mark + suffix
