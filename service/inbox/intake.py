"""Intake: check one inbox file, record the verdict in the ledger, move the file.

Checks run in a fixed order, and the first that fails rejects the file with a reason a
person can act on (which file, which line, what to do):

1. a name that is not valid UTF-8 (the ledger, the event log and the API hold text, so
   it is recorded, and moved, under :func:`printable_name`);
2. a symbolic link (never followed);
3. a folder (moved as a whole: only the inbox top level receives drops);
4. not a regular file (FIFO, socket, device);
5. a name other than ``*.jsonl`` / ``*.jsonl.gz``;
6. larger than ``watcher.max_file_bytes``;
7. :func:`trainer.records.formats.validate_file`: a whole-file problem, or any invalid line
   (strict: a file with one bad line is not trained on at all).

A file that passes is recorded ``queued``, or ``duplicate`` when the same content is
already queued, training or trained. The ledger record is written before the file is
moved, so a crash in between leaves a top-level file whose record already exists;
:meth:`Intake.finish_interrupted` recognises it (same path, same content) and completes
the move instead of recording it twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config.sections import WatcherSection
from service.inbox.layout import InboxLayout, move_file, reason_path, write_text_atomic
from service.inbox.names import is_utf8, printable_name, recorded_path, undecodable_reason
from service.inbox.reasons import line_problems, reason_text, strict_reason
from service.ledger.records import FileRecord, FileState, LineProblem
from trainer.records.events import EventLog
from trainer.records.formats import (
    DataError,
    is_data_file,
    validate_file,
)
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)


class FileChangedError(RuntimeError):
    """The file changed while it was being checked: its writer is not done."""


@dataclass(frozen=True)
class Verdict:
    """What checking one file found, before anything is written anywhere."""

    path: Path
    """The file checked, at the top level of the inbox."""
    accepted: bool
    """Trainable as is (it may still turn out to be a duplicate)."""
    reason: str | None
    """Why it is rejected: file, line and what to do; ``None`` when accepted."""
    sha256: str | None = None
    """Content hash, when the file could be read."""
    size: int = 0
    """Bytes on disk."""
    format: str | None = None
    """Drop format, when one was recognised."""
    n_examples: int = 0
    """Valid examples."""
    n_invalid: int = 0
    """Invalid lines."""
    invalid_lines: tuple[LineProblem, ...] = ()
    """The first invalid lines with their reasons."""


class Intake:
    """Checks inbox files, records them in the ledger and files them away."""

    def __init__(
        self, layout: InboxLayout, *, ledger: Any, settings: WatcherSection, events: EventLog
    ) -> None:
        self.layout = layout
        self.ledger = ledger
        self.settings = settings
        self.events = events

    def finish_interrupted(self, path: Path) -> FileRecord | None:
        """Complete the move of a file recorded before a crash; ``None`` if it is new.

        A record found by path whose file is elsewhere already (the crash came between
        the move and the path update) gets its path repaired, and ``path`` is new.
        """
        record = self.ledger.find_by_path(recorded_path(path))
        if record is None:
            return None
        if _holds(record, path):
            log.warning(
                "%s was recorded (id %d, %s) but not moved, probably because of a crash; "
                "finishing the move",
                record.name,
                record.id,
                record.state,
            )
            placed = self.place(record, path)
            self._announce(placed)
            return placed
        destination = self.layout.destination(record)
        if os.path.lexists(destination):
            self.ledger.set_path(record.id, str(destination))
            log.warning("repaired the path of file %d: it is %s", record.id, destination)
        return None

    def inspect(self, path: Path) -> Verdict | None:
        """Check ``path``; ``None`` when it vanished (nothing to record)."""
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            log.info("%s vanished before it was checked", printable_name(str(path)))
            return None
        name = path.name
        mode = before.st_mode
        if not is_utf8(name):
            # First: every later reason would carry the name into the ledger, which holds text.
            return _rejected(path, undecodable_reason(name), size=before.st_size)
        if stat.S_ISLNK(mode):
            return _rejected(
                path,
                f"{name} is a symbolic link (to {_link_target(path)}); traind does not follow "
                "links in the inbox: copy or move the file itself into the inbox",
                size=before.st_size,
            )
        if stat.S_ISDIR(mode):
            return _rejected(
                path,
                f"{name} is a folder; traind takes files, not folders: move the *.jsonl files "
                "inside it into the inbox",
                size=before.st_size,
            )
        if not stat.S_ISREG(mode):
            return _rejected(
                path,
                f"{name} is a {_kind(mode)}, not a regular file; drop a regular file "
                "(write it elsewhere, then move it into the inbox)",
            )
        if not is_data_file(name):
            return _rejected(
                path,
                f"{name}: unsupported file name; only *.jsonl and *.jsonl.gz files are taken "
                "(one JSON object per line): rename it if it holds JSON lines",
                size=before.st_size,
            )
        limit = self.settings.max_file_bytes
        if before.st_size > limit:
            return _rejected(
                path,
                f"{name} is {before.st_size} bytes, over the limit of {limit} bytes "
                "(watcher.max_file_bytes); split it into smaller files",
                size=before.st_size,
            )
        verdict = self._validate(path)
        if verdict is not None:
            _check_unchanged(path, before)
        return verdict

    def unreadable(self, path: Path, *, error: BaseException, attempts: int) -> Verdict | None:
        """The rejection of a file whose check kept failing (``None`` if it is gone)."""
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return None
        return _rejected(
            path,
            f"{printable_name(path.name)} could not be checked ({attempts} attempts; last error "
            f"{type(error).__name__}: {error}); make sure traind can read it, then drop it again",
            size=size,
        )

    def commit(self, verdict: Verdict) -> FileRecord:
        """Record ``verdict`` in the ledger, announce it, and move the file where it belongs."""
        name = printable_name(verdict.path.name)
        if verdict.accepted:
            assert verdict.sha256 is not None and verdict.format is not None
            record = self.ledger.record_file(
                name=name,
                path=recorded_path(verdict.path),
                sha256=verdict.sha256,
                size=verdict.size,
                format=verdict.format,
                n_examples=verdict.n_examples,
            )
        else:
            record = self.ledger.record_rejected(
                name=name,
                path=recorded_path(verdict.path),
                reason=verdict.reason or "rejected",
                sha256=verdict.sha256,
                size=verdict.size,
                format=verdict.format,
                n_examples=verdict.n_examples,
                n_invalid=verdict.n_invalid,
                invalid_lines=verdict.invalid_lines,
            )
        # Moved first: the worker may claim a queued file at once, and reads its path.
        placed = self.place(record, verdict.path)
        self._announce(placed)
        return placed

    def place(self, record: FileRecord, path: Path) -> FileRecord:
        """Move ``record``'s file from ``path`` to its sub-folder and update the ledger path."""
        destination = self.layout.destination(record)
        if record.state is FileState.REJECTED:
            # Before the move: a crash after it would leave the file out of the rescan's
            # reach without its reason.
            write_text_atomic(reason_path(destination), reason_text(record))
        target = move_file(path, destination)
        self.ledger.set_path(record.id, str(target))
        log.debug("moved %s to %s", record.name, target)
        return dataclasses.replace(record, path=str(target))

    def _validate(self, path: Path) -> Verdict | None:
        name = path.name
        try:
            report = validate_file(path, max_line_bytes=self.settings.max_line_bytes)
        except DataError as exc:
            if not os.path.lexists(path):
                log.info("%s vanished while it was checked", path)
                return None
            problems = line_problems(exc.errors, name=name)
            if not problems and exc.line is not None:
                problems = (LineProblem(line=exc.line, reason=str(exc)),)
            return _rejected(
                path,
                str(exc),
                sha256=file_sha256(path),
                size=path.stat().st_size,
                n_invalid=len(exc.errors),
                invalid_lines=problems,
            )
        if report.n_invalid:
            return _rejected(
                path,
                strict_reason(report),
                sha256=report.sha256,
                size=report.size,
                format=report.format,
                n_examples=report.n_examples,
                n_invalid=report.n_invalid,
                invalid_lines=line_problems(report.errors, name=name),
            )
        return Verdict(
            path=path,
            accepted=True,
            reason=None,
            sha256=report.sha256,
            size=report.size,
            format=report.format,
            n_examples=report.n_examples,
        )

    def _announce(self, record: FileRecord) -> None:
        try:
            self._emit(record)
        except Exception:
            # The file is recorded and filed away; a full disk must not make it look untaken.
            log.exception("could not write the event for file %d to the event log", record.id)

    def _emit(self, record: FileRecord) -> None:
        # A queued or duplicate file has its one log line from the ledger as it is recorded
        # (Ledger.record_file); a rejection is a warning here, as a person must act on it.
        if record.state is FileState.REJECTED:
            log.warning("rejected %s (id %d): %s", record.name, record.id, record.error)
            self.events.emit(
                "file_rejected",
                id=record.id,
                file=record.name,
                sha256=record.sha256,
                reason=record.error,
                lines=[p.line for p in record.invalid_lines if p.line is not None],
            )
        elif record.state is FileState.DUPLICATE:
            self.events.emit(
                "file_duplicate",
                id=record.id,
                file=record.name,
                sha256=record.sha256,
                duplicate_of=record.duplicate_of,
            )
        else:
            self.events.emit(
                "file_queued",
                id=record.id,
                file=record.name,
                sha256=record.sha256,
                format=record.format,
                n_examples=record.n_examples,
                size=record.size,
            )


def _rejected(path: Path, reason: str, **fields: Any) -> Verdict:
    return Verdict(path=path, accepted=False, reason=reason, **fields)


def _holds(record: FileRecord, path: Path) -> bool:
    """Whether ``path`` holds the very file ``record`` describes."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    if record.sha256 is None:
        # Never hashed (a link, a FIFO, a file over the size limit): it was rejected, and the
        # same name and size is the best evidence left.
        return record.state is FileState.REJECTED and record.size == now.st_size
    if not stat.S_ISREG(now.st_mode) or now.st_size != record.size:
        return False
    return file_sha256(path) == record.sha256


def _check_unchanged(path: Path, before: os.stat_result) -> None:
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    ):
        raise FileChangedError(f"{path.name} changed while it was checked")


def _link_target(path: Path) -> str:
    try:
        # A target is any bytes; the reason that names it goes into the ledger as text.
        return printable_name(str(path.readlink()))
    except OSError:
        return "an unreadable target"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"
