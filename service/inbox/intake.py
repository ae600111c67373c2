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
already queued, training or trained. :mod:`service.inbox.filing` records the verdicts of
a batch in one transaction before it moves the files, so a crash in between leaves
top-level files whose records already exist; :meth:`Intake.finish_interrupted`
recognises each (same path, same content) and completes the move instead of recording
it twice.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.config.sections import WatcherSection
from service.inbox.filing import Filed, Filing, holds
from service.inbox.layout import InboxLayout
from service.inbox.names import is_utf8, printable_name, recorded_path, undecodable_reason
from service.inbox.reasons import line_problems, strict_reason
from service.inbox.verdict import Verdict
from service.ledger.records import FileRecord, LineProblem
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


class Intake:
    """Checks inbox files, records them in the ledger and files them away."""

    def __init__(
        self, layout: InboxLayout, *, ledger: Any, settings: WatcherSection, events: EventLog
    ) -> None:
        self.layout = layout
        self.ledger = ledger
        self.settings = settings
        self.events = events
        self.filing = Filing(layout, ledger=ledger, events=events)
        """Recording, moving and announcing what the checks found."""

    def recorded_at(self, paths: Iterable[Path]) -> dict[str, FileRecord]:
        """The newest record of each of ``paths`` that has one, by recorded path: what
        :meth:`finish_interrupted` looks up, for a whole rescan in one query."""
        return self.ledger.find_by_paths(recorded_path(path) for path in paths)

    def finish_interrupted(
        self, path: Path, *, known: Mapping[str, FileRecord] | None = None
    ) -> FileRecord | None:
        """Complete the move of a file recorded before a crash; ``None`` if it is new.

        A record found by path whose file is elsewhere already (the crash came between
        the move and the path update) gets its path repaired, and ``path`` is new.
        ``known`` is :meth:`recorded_at` for a set of paths that includes ``path``.
        """
        recorded = recorded_path(path)
        record = self.ledger.find_by_path(recorded) if known is None else known.get(recorded)
        if record is None:
            return None
        if holds(record, path):
            log.warning(
                "%s was recorded (id %d, %s) but not moved, probably because of a crash; "
                "finishing the move",
                record.name,
                record.id,
                record.state,
            )
            placed = self.filing.place(record, path)
            self.filing.announce(placed)
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

    def commit_all(self, verdicts: Sequence[Verdict]) -> Filed:
        """Record ``verdicts`` in one ledger transaction, then move and announce them
        (:meth:`service.inbox.filing.Filing.file`)."""
        return self.filing.file(verdicts)

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


def _rejected(path: Path, reason: str, **fields: Any) -> Verdict:
    return Verdict(path=path, accepted=False, reason=reason, **fields)


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
