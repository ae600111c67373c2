"""Alembic migrations of the ledger, without an ``alembic.ini``.

The Alembic environment and versions ship as the ``migrations`` package, found through
importlib wherever traind is installed. ``Ledger.open`` upgrades to head at every start,
and ``traind migrate`` does it on request.

Try it: ``python -c "from service.ledger.migrate import upgrade; upgrade('sqlite:////tmp/l.db')"``.
"""

from __future__ import annotations

import importlib.resources
import logging

# Importing alembic announces its seven autogenerate plugins at INFO ("setup plugin
# alembic.autogenerate.schemas", ...) in every process: quieted before the first import.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Connection  # noqa: E402

from service.ledger.engine import READ_OPTIONS, create_ledger_engine  # noqa: E402

log = logging.getLogger(__name__)


class MigrationLinesOnly(logging.Filter):
    """Lets through alembic's "Running upgrade ..." lines (a migration is being applied)
    and its warnings; drops "Context impl SQLiteImpl." and "Will assume transactional
    DDL.", which repeat at every start and every readiness check."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(record.msg).startswith("Running ")


logging.getLogger("alembic.runtime.migration").addFilter(MigrationLinesOnly())

MIGRATIONS_PACKAGE = "migrations"

# Any constant of our own: the key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x7472_6169_6E64  # "traind"


class MigrationError(RuntimeError):
    """The ledger's schema cannot be brought to this traind's head."""


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic config for the ledger at ``url`` (or on an open ``connection``, which
    ``migrations/env.py`` then uses as it is, inside its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(importlib.resources.files(MIGRATIONS_PACKAGE)))
    if url is not None:
        # The ini-style config interpolates "%": a URL-escaped password must survive it.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the installed migrations know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"the {MIGRATIONS_PACKAGE} package holds no revisions")
    return head


def upgrade(url: str, *, revision: str = "head") -> None:
    """Migrate the ledger at ``url`` to ``revision`` (creating it if needed)."""
    engine = create_ledger_engine(url)
    try:
        with engine.begin() as connection:
            upgrade_connection(connection, revision=revision)
    finally:
        engine.dispose()


def downgrade(url: str, *, revision: str = "base") -> None:
    """Migrate the ledger at ``url`` back to ``revision`` (``base``: no tables at all)."""
    engine = create_ledger_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection=connection), revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the ledger at ``url`` is at; None for a database never migrated."""
    engine = create_ledger_engine(url)
    try:
        with engine.connect() as connection:
            # A read: on SQLite, no write lock (the default for ledger transactions).
            connection.execution_options(**READ_OPTIONS)
            return revision_of(connection)
    finally:
        engine.dispose()


def upgrade_connection(connection: Connection, *, revision: str = "head") -> None:
    """Migrate the database behind an open connection, inside its current transaction.

    Several processes may start at once and each migrate: on SQLite the transaction's
    ``BEGIN IMMEDIATE`` already makes them take turns; on PostgreSQL an advisory lock does,
    so the second one finds the schema at head instead of creating tables twice.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    before = revision_of(connection)
    config = alembic_config(connection=connection)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if before is not None and before not in known:
        raise MigrationError(
            f"the ledger is at revision {before!r}, which this traind does not know: a newer "
            "traind has migrated it; run that version (or restore a backup of the ledger)"
        )
    command.upgrade(config, revision)
    after = revision_of(connection)
    if after != before:
        log.info("ledger migrated from %s to %s", before or "an empty database", after)


def revision_of(connection: Connection) -> str | None:
    """The revision of the database behind an open connection."""
    return MigrationContext.configure(connection).get_current_revision()
