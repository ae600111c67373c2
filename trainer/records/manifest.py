"""What makes a folder complete: ``manifest.json`` (each file's size and sha256), written last.

Torch-free on purpose, so ``traind inspect`` (``service.checkpoints.catalog``) checks folders by
the very rules the trainer writes and loads them with (``trainer.checkpoint``,
``trainer.export``), without loading torch. The folders' names are in
``trainer.records.checkpoints``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.records.checkpoints import (
    ADAPTER_WEIGHTS,
    FILES,
    MANIFEST,
    OPTIMIZER,
    SHARDED_METADATA,
    WEIGHTS,
    WEIGHTS_INDEX,
)
from trainer.records.events import utc_now
from trainer.records.storage import file_sha256, fsync_path


def write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )


def write_manifest(staging: Path, *, files: tuple[str, ...], **fields: Any) -> None:
    """Write ``manifest.json`` (size and sha256 of each of ``files``) last, durably; the
    folder is complete from this moment. ``fields`` go into the manifest as they are."""
    manifest = {
        "created_at": utc_now(),
        **fields,
        "files": {
            fname: {
                "size": (staging / fname).stat().st_size,
                "sha256": file_sha256(staging / fname),
            }
            for fname in files
        },
    }
    write_json(staging / MANIFEST, manifest)
    fsync_path(staging / MANIFEST)
    fsync_path(staging)


def verify(path: Path, *, deep: bool = True, files: Iterable[str] = FILES) -> str | None:
    """None if ``manifest.json`` vouches for ``path``, else the reason it does not.

    Each of ``files`` must be listed, and so must the weights (``WEIGHTS``, or
    ``WEIGHTS_INDEX`` with its shards, or a Distributed Checkpoint's ``SHARDED_METADATA``
    with its shards, which hold the optimizer too). Every listed file must be present and of the listed
    size; ``deep`` checks its sha256 too.
    """
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (an interrupted write, or not a checkpoint)"
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"manifest.json is unreadable: {exc}"
    if not {WEIGHTS, WEIGHTS_INDEX, ADAPTER_WEIGHTS, SHARDED_METADATA} & set(listed):
        return (
            f"manifest.json lists no weights ({WEIGHTS}, {WEIGHTS_INDEX}, {ADAPTER_WEIGHTS} "
            f"or {SHARDED_METADATA})"
        )
    # A sharded checkpoint holds the optimizer among its shards.
    required = [f for f in files if not (f == OPTIMIZER and SHARDED_METADATA in listed)]
    required += sorted(set(listed) - set(required))
    for name in required:
        entry, fpath = listed.get(name), path / name
        if not isinstance(entry, dict):
            return f"manifest.json does not list {name}"
        try:
            size = fpath.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry.get("size"):
            return f"{name} has {size} bytes, the manifest says {entry.get('size')}"
        if deep and file_sha256(fpath) != entry.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None
