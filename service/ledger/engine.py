"""The ledger's database engine: SQLite tuned for a multi-process job ledger, or PostgreSQL.

Every process (watcher, worker, API) opens its own engine on the same database. On SQLite
that means file locks decide who writes, so every connection gets the same pragmas and
every write transaction takes the write lock when it begins (``BEGIN IMMEDIATE``):
a transaction that reads a row and then updates it can never be overtaken between the
two, and never hits the "deferred transaction cannot upgrade its lock" deadlock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

BEGIN_OPTION = "traind_sqlite_begin"
"""Execution option naming the SQLite BEGIN mode of a connection's transactions."""

READ_OPTIONS = {BEGIN_OPTION: "DEFERRED"}
"""Execution options for read-only work: a deferred BEGIN takes no write lock, and under
WAL readers never wait for the writer."""


def create_ledger_engine(url: str, *, busy_timeout_ms: int = 10_000) -> Engine:
    """An engine for the ledger at ``url``, with the SQLite setup described above.

    For a SQLite file, its folder (the state folder) is created if missing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a PostgreSQL server restart must not break a daemon that runs for months.
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    _configure_sqlite(engine, busy_timeout_ms=busy_timeout_ms)
    return engine


def _use_wal(cursor: Any, *, busy_timeout_ms: int) -> None:
    """Switch the database to WAL unless it is already (the mode is stored in the file).

    Switching takes an exclusive lock, and SQLite answers "database is locked" at once,
    without waiting out busy_timeout, when another process is opening the same new
    ledger at that moment (the daemon and its worker can start together), so retry
    within the busy timeout.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module (which would BEGIN lazily
        # and in DEFERRED mode): the "begin" hook below emits our own BEGIN.
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself may have to wait for a lock.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            # WAL: readers (the API) never block the writer (the worker) and vice versa.
            _use_wal(cursor, busy_timeout_ms=busy_timeout_ms)
            # FULL rather than WAL's usual NORMAL: the ledger writes a few rows a minute, so
            # the extra fsync per commit costs nothing, and it makes every committed record
            # survive a power cut. That matters: the watcher moves a drop out of the inbox
            # only after recording it, so a record lost after the move would lose the file.
            cursor.execute("PRAGMA synchronous = FULL")
            # SQLite ignores foreign keys unless asked, per connection.
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {_begin_mode(mode)}")


def _begin_mode(mode: Any) -> str:
    if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
        raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
    return str(mode)
