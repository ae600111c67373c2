"""Ledger queries for rebuilding a lost or older ledger from the inbox folders: files
recorded under the ids their names carry, and ids that never collide with a file's.

Part of ``Ledger``; see ``service.ledger.ledger`` and ``service.inbox.inventory``.
"""

from __future__ import annotations

import logging

from sqlalchemy import text

from service.ledger.drops import new_row
from service.ledger.errors import LedgerError
from service.ledger.models import FileRow
from service.ledger.records import FileRecord, FileState
from service.ledger.store import Store, utcnow

log = logging.getLogger(__name__)


class RestoreQueries(Store):
    """Recording files under given ids; keeping new ids above them."""

    def restore_file(self, *, file_id: int, state: FileState, **fields: object) -> FileRecord:
        """Record a file under the id its name in the inbox folders carries (rebuilding a
        lost ledger); LedgerError if the id is taken. ``fields`` as for ``record_file``,
        plus ``error``, ``start_step``, ``end_step``, ``lineage_id``, ``duplicate_of``."""
        now = utcnow()
        extra = {
            k: fields.pop(k)
            for k in ("error", "start_step", "end_step", "lineage_id", "duplicate_of")
            if k in fields
        }
        fields.setdefault("n_invalid", 0)
        fields.setdefault("invalid_lines", ())
        row = new_row(now, state=state, priority=0, **fields)  # type: ignore[arg-type]
        row.id = file_id
        for key, value in extra.items():
            setattr(row, key, value)
        if state not in (FileState.QUEUED, FileState.TRAINING):
            row.finished_at = now
        with self._writing() as session:
            if session.get(FileRow, file_id) is not None:
                raise LedgerError(f"file #{file_id} is already recorded")
            session.add(row)
            session.flush()
            record = row.record()
        self._ids_above(file_id)
        log.info("file #%d (%s) restored as %s", file_id, record.name, state)
        return record

    def ensure_ids_above(self, file_id: int) -> None:
        """Make every new file's id larger than ``file_id`` (e.g. the largest id among the
        files in the inbox folders), so a name never collides with an existing one."""
        self._ids_above(file_id)

    def _ids_above(self, file_id: int) -> None:
        with self._writing() as session:
            if self._postgres:
                session.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('files', 'id'), "
                        "GREATEST(:n, (SELECT COALESCE(MAX(id), 0) FROM files), 1))"
                    ),
                    {"n": file_id},
                )
                return
            # SQLite AUTOINCREMENT keeps the largest id handed out in sqlite_sequence.
            current = session.execute(
                text("SELECT seq FROM sqlite_sequence WHERE name = 'files'")
            ).scalar()
            if current is None:
                session.execute(
                    text("INSERT INTO sqlite_sequence (name, seq) VALUES ('files', :n)"),
                    {"n": file_id},
                )
            elif current < file_id:
                session.execute(
                    text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'files'"),
                    {"n": file_id},
                )
