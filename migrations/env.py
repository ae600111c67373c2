"""Alembic environment of the traind ledger.

Run by ``service.ledger.migrate`` (``Ledger.open`` at every start, ``traind migrate``), which
passes either an open connection in ``config.attributes["connection"]`` (used as it is,
inside the caller's transaction) or the database URL as ``sqlalchemy.url``.
``render_as_batch``: SQLite cannot alter most of a table in place, so later revisions
alter tables by batch (copy and move), which PostgreSQL simply runs as ALTERs.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from service.ledger.engine import create_ledger_engine
from service.ledger.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Emit the SQL for a database URL without connecting (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url or pass a connection")
    # The ledger's own engine, so migrations run under the same SQLite pragmas and
    # BEGIN IMMEDIATE as everything else.
    engine = create_ledger_engine(url)
    try:
        with engine.begin() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
