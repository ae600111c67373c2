"""Folders that appear complete under their name, or not at all (ARCHITECTURE.md rule 8).

Checkpoints, gold, the export and the entries of the tokenized cache are all written the
same way: into a staging folder beside the destination (the same filesystem, so the
rename is atomic), the files fsynced, the manifest written last, one rename into place,
the parent fsynced. :func:`staged_folder` is that sequence. Each writer fills the stage,
says what its manifest is, how an existing destination is handled and where its crash
points are; a stage that fails is removed, so nothing half-written keeps a real name.

Torch-free: the standard library and ``trainer.records`` only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer.records.storage import fsync_path

STAGING_PREFIX = ".staging-"
"""Names of folders being written; a start clears the ones a crash left."""
TRASH_PREFIX = ".trash-"
"""Names of replaced folders on their way out (a crash may leave the only copy there)."""


@dataclass(kw_only=True)
class Stage:
    """A folder being written under a hidden name beside its destination."""

    path: Path
    """The staging folder: the writer puts its files here."""
    target: Path
    """Where the folder appears once complete."""
    fsync_files: tuple[str, ...] = ()
    """Files under ``path`` to fsync before the manifest (empty when the writer fsyncs its
    own files as it closes them)."""
    write_manifest: Callable[[Path], None] | None = None
    """Writes the manifest into the staging folder, last and durably; the writer must set
    it before the ``with`` block ends."""


def no_fault(point: str) -> None:
    """The default crash hook: none."""


@contextmanager
def staged_folder(
    target: Path,
    *,
    unique: str | None = None,
    install: Callable[[Path, Path], None] | None = None,
    fault: Callable[[str], None] = no_fault,
) -> Iterator[Stage]:
    """Stage ``target``: yields a :class:`Stage` whose empty folder the caller fills.

    When the block ends the listed files are fsynced, the manifest is written, the stage
    is put in place by ``install(stage, target)`` (default :func:`replace_folder`) and
    the parent is fsynced; ``fault`` is called with ``before_manifest``,
    ``before_rename`` and ``after_rename`` on the way, for kill tests. ``unique`` tells
    the stage apart from other writers' (default: random). On any error, and whatever
    ``install`` left behind, the stage is removed.
    """
    stage = Stage(
        path=target.parent / f"{STAGING_PREFIX}{target.name}-{unique or uuid.uuid4().hex[:8]}",
        target=target,
    )
    stage.path.mkdir()
    try:
        yield stage
        if stage.write_manifest is None:
            raise RuntimeError(f"staged folder {target} has no manifest to seal it")
        for name in stage.fsync_files:
            fsync_path(stage.path / name)
        fault("before_manifest")
        stage.write_manifest(stage.path)
        fault("before_rename")
        (install or replace_folder)(stage.path, target)
        fault("after_rename")
        fsync_path(target.parent)
    finally:
        shutil.rmtree(stage.path, ignore_errors=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an existing ``target`` aside first.

    ``staging`` must be a complete folder on the same filesystem as ``target``; the
    caller fsyncs ``target.parent`` afterwards to make the renames durable.
    """
    if not target.exists():
        os.rename(staging, target)
        return
    trash = target.parent / f"{TRASH_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    os.rename(target, trash)
    # A crash between these two renames leaves only the trash copy; the checkpoints'
    # recovery at the next start puts it back, so a named folder (gold) never vanishes.
    os.rename(staging, target)
    shutil.rmtree(trash, ignore_errors=True)
