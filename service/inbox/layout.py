"""The inbox folder: which names are drops, where checked files go, and how they get there.

Only the top level of the inbox receives drops. traind owns three sub-folders and moves
every checked file into one of them, renamed ``<id:06d>-<name>`` after its ledger id so
that two drops of the same name never collide:

- ``accepted/``: queued for training;
- ``duplicates/``: content already queued, training or trained;
- ``rejected/``: not trainable, with ``<id:06d>-<name>.reason.txt`` beside it.

Nothing is ever deleted. Moves are renames inside one folder tree (so on one
filesystem), hence atomic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.inbox.names import REASON_SUFFIX, filed_name
from service.ledger.records import FileRecord, FileState
from trainer.records.storage import fsync_folder_quietly

ACCEPTED = "accepted"
REJECTED = "rejected"
DUPLICATES = "duplicates"
OWN_FOLDERS = frozenset({ACCEPTED, REJECTED, DUPLICATES})
"""traind's own sub-folders of the inbox; every other folder at the top level is a drop."""
IGNORED_SUFFIXES = (".tmp", ".part")


def is_ignored(name: str) -> bool:
    """Names a writer uses while it is still writing (hidden, ``.tmp``, ``.part``)."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@dataclass(frozen=True)
class InboxLayout:
    """The inbox and the sub-folders traind owns in it."""

    root: Path
    """The watched folder (absolute)."""

    @property
    def accepted(self) -> Path:
        """Queued drops."""
        return self.root / ACCEPTED

    @property
    def rejected(self) -> Path:
        """Rejected drops and their ``.reason.txt``."""
        return self.root / REJECTED

    @property
    def duplicates(self) -> Path:
        """Drops whose content was already taken."""
        return self.root / DUPLICATES

    def create(self) -> None:
        """Make the inbox and its sub-folders (a clear error if a file is in the way)."""
        for folder in (self.root, self.accepted, self.rejected, self.duplicates):
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(
                    f"{folder} is a file but traind needs a folder there; move the file away"
                )
            folder.mkdir(parents=True, exist_ok=True)

    def drop_name(self, path: Path) -> str | None:
        """The name of the drop at ``path``, or None when ``path`` cannot be one: only the
        top level receives drops, not traind's own folders, nor a name still being written."""
        if path.parent != self.root or is_ignored(path.name) or path.name in OWN_FOLDERS:
            return None
        return path.name

    def folder_for(self, state: FileState) -> Path:
        """Where a file in ``state`` belongs: every state but these two was accepted once."""
        if state is FileState.DUPLICATE:
            return self.duplicates
        if state is FileState.REJECTED:
            return self.rejected
        return self.accepted

    def destination(self, record: FileRecord) -> Path:
        """The path ``record``'s file is moved to, from its id, name and state; a name too
        long for the filesystem beside its ``.reason.txt`` is shortened (see ``filed_name``)."""
        return self.folder_for(record.state) / filed_name(record.id, record.name)


def reason_path(destination: Path) -> Path:
    """The ``.reason.txt`` beside a rejected file."""
    return destination.with_name(destination.name + REASON_SUFFIX)


def move_file(source: Path, destination: Path, *, sync: bool = True) -> Path:
    """Rename ``source`` to ``destination`` without overwriting anything; return where it went.

    Names carry the ledger id, and ids are kept above every id in the folders
    (:mod:`service.inbox.inventory`), so a clash means a leftover from an earlier crash; the new
    file then gets a ``~N`` mark before its extension (``000007-day1~1.jsonl``), so its
    name stays one the worker reads. With ``sync=False`` the caller fsyncs both folders
    itself (:func:`sync_folders`, once for a batch of moves) before it relies on the move.
    """
    target = destination
    n = 0
    while os.path.lexists(target):
        n += 1
        target = destination.with_name(_marked(destination.name, n))
    os.rename(source, target)
    if sync:
        # The rename must survive a power cut, or the ledger and the folders disagree.
        sync_folders([source.parent, target.parent])
    return target


def sync_folders(folders: Iterable[Path]) -> None:
    """fsync each folder once, making the renames in them durable."""
    for folder in dict.fromkeys(folders):
        fsync_folder_quietly(folder)


def filed_candidates(destination: Path) -> Iterator[Path]:
    """Where :func:`move_file` may have put a file sent to ``destination``: there, then its
    ``~N`` variants, as long as each exists."""
    target = destination
    n = 0
    while os.path.lexists(target):
        yield target
        n += 1
        target = destination.with_name(_marked(destination.name, n))


def _marked(name: str, n: int) -> str:
    """``name`` with ``~n`` before its data extension (or at its end if it has none)."""
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            return f"{name[: -len(suffix)]}~{n}{suffix}"
    return f"{name}~{n}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    fsync_folder_quietly(path.parent)
