"""The plumbing every ledger query shares: the engine and one short transaction per call.

``Ledger`` (``service.ledger.ledger``) is assembled from the query classes built on
``Store``; nothing outside the package uses this module.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.ledger.engine import READ_OPTIONS, create_ledger_engine
from service.ledger.errors import LedgerError, LedgerFullError
from service.ledger.models import Base, FileRow
from trainer.records.storage import as_disk_full, describe, free_bytes

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind the ledger stores)."""
    return datetime.now(UTC)


class Store:
    """An engine on the ledger database and the transactions the queries run in."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.url = url
        self._engine: Engine = create_ledger_engine(url, busy_timeout_ms=busy_timeout_ms)
        self._postgres = self._engine.dialect.name == "postgresql"
        # expire_on_commit=False: records are built inside the transaction anyway, and a
        # row read after commit must not trigger a hidden second query.
        self._writer = sessionmaker(bind=self._engine, expire_on_commit=False)
        self._read_engine = self._engine.execution_options(**READ_OPTIONS)
        self._reader = sessionmaker(bind=self._read_engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for migrations and tests)."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection. The object may not be used afterwards."""
        self._engine.dispose()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite a deferred BEGIN: it takes no write lock)."""
        with self._reader() as session, session.begin():
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction (on SQLite ``BEGIN IMMEDIATE``: the write lock is taken first,
        so whatever it reads stays true until it commits). A full disk is raised as
        LedgerFullError, whatever the database calls it."""
        try:
            with self._writer() as session, session.begin():
                yield session
        except OperationalError as exc:
            full = self._full(exc)
            if full is not None:
                raise full from exc
            raise

    def _full(self, exc: OperationalError) -> LedgerFullError | None:
        """The LedgerFullError that ``exc`` is, if the database ran out of space."""
        orig = exc.orig
        database = self._engine.url.database
        folder = Path(database).parent if database and not self._postgres else Path.cwd()
        if getattr(orig, "sqlstate", None) == "53100" or (
            getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        ):
            free = free_bytes(folder) if not self._postgres else None
            return LedgerFullError(
                f"out of disk space: the ledger ({self._shown_url()}) cannot be written "
                f"({orig}); {describe(free)} free there; free some space",
                path=folder,
            )
        if self._postgres:
            return None
        full = as_disk_full(exc, path=folder, what="the ledger")
        return LedgerFullError(full.message, path=folder) if full is not None else None

    def _shown_url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def _lock_content(self, session: Session, sha256: str | None) -> None:
        """Serialise transactions about one content hash until this one ends.

        SQLite needs nothing (``BEGIN IMMEDIATE`` already serialises all writers). On
        PostgreSQL two drops of the same content recorded at once would each see no twin
        and both be queued; a transaction-scoped advisory lock on the hash prevents that.
        """
        if not self._postgres or not sha256:
            return
        # 56 bits of a stable digest (never hash(): it differs between processes) fit
        # PostgreSQL's signed bigint.
        key = int.from_bytes(hashlib.sha256(sha256.encode()).digest()[:7], "big")
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @staticmethod
    def _locked_file(session: Session, file_id: int) -> FileRow:
        """The file's row, locked for update until the transaction ends; LedgerError if none."""
        row = session.get(FileRow, file_id, with_for_update=True)
        if row is None:
            raise LedgerError(f"no file #{file_id}")
        return row

    @staticmethod
    def _upsert(
        session: Session, model: type[Base], *, values: dict[str, Any], keys: tuple[str, ...]
    ) -> None:
        """Insert a row, or update the one with the same ``keys``, in one statement."""
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            statement = postgresql.insert(model).values(**values)
        elif dialect == "sqlite":
            statement = sqlite.insert(model).values(**values)
        else:
            raise LedgerError(f"the ledger supports SQLite and PostgreSQL, not {dialect}")
        changed = {name: statement.excluded[name] for name in values if name not in keys}
        session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changed))
