"""Content hashes: a drop's identity in the lineage and a checkpoint file's in its manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 4 * 2**20


def file_sha256(path: Path | str) -> str:
    """sha256 hex of a file's bytes, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
