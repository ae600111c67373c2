"""A file state for files a rollback to gold undid: ``rolled_back``. The CHECK constraint
on ``files.state`` is recreated with it.

Hand-written and frozen like 0001: it names the states itself rather than importing them
from the models, which will move on while this revision must not. PostgreSQL runs it as
two ALTERs. SQLite cannot alter a constraint in place, so the batch copies the table into
a new one: that copy must keep ``AUTOINCREMENT`` and the largest id ever handed out
(``sqlite_sequence``, which ``Ledger.ensure_ids_above`` may have set above every row), or
a new drop could get the id of a file in the inbox folders, and its duplicates' links.

Revision ID: 0005_rolled_back
Revises: 0004_file_lineage
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_rolled_back"
down_revision: str | Sequence[str] | None = "0004_file_lineage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("queued", "training", "done", "failed", "rejected", "duplicate", "cancelled")
AFTER = (*BEFORE, "rolled_back")
CONSTRAINT = "ck_files_state"
"""As 0001 named it; the models' naming convention, which Alembic applies to every name it
is given here too, makes it ``ck_files_ck_files_state`` in the database."""


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _recreate(states: Sequence[str]) -> None:
    context = op.get_context()
    # Offline (``alembic upgrade --sql``) there is no database to read from.
    copied = context.dialect.name == "sqlite" and not context.as_sql
    issued = _largest_id_issued() if copied else None
    links = _unlink_duplicates() if copied else []
    with op.batch_alter_table("files", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(CONSTRAINT, type_="check")
        batch.create_check_constraint(CONSTRAINT, _in("state", states))
    if links:
        op.get_bind().execute(
            sa.text("UPDATE files SET duplicate_of = :duplicate_of WHERE id = :id"), links
        )
    if issued is not None:
        # The copy's sequence only knows the ids it copied (none, if it copied no row).
        op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'files'"))
        op.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('files', :n)").bindparams(
                n=issued
            )
        )


def _largest_id_issued() -> int | None:
    return (
        op.get_bind()
        .execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'files'"))
        .scalar()
    )


def _unlink_duplicates() -> list[dict[str, int]]:
    """Take ``duplicate_of`` out of the rows while the table is copied; the links, to put
    back. The ledger enforces foreign keys, and a migration runs inside a transaction,
    where SQLite cannot turn them off: dropping the old table would find the copy's rows
    pointing at it (the copy's key names ``files``) and fail, even deferred."""
    bind = op.get_bind()
    links = bind.execute(
        sa.text("SELECT id, duplicate_of FROM files WHERE duplicate_of IS NOT NULL")
    ).all()
    bind.execute(sa.text("UPDATE files SET duplicate_of = NULL WHERE duplicate_of IS NOT NULL"))
    return [{"id": row.id, "duplicate_of": row.duplicate_of} for row in links]


def upgrade() -> None:
    _recreate(AFTER)


def downgrade() -> None:
    # The older schema has no word for them: they were done (with the steps they had)
    # before this state existed.
    files = sa.table("files", sa.column("state", sa.String))
    op.execute(files.update().where(files.c.state == "rolled_back").values(state="done"))
    _recreate(BEFORE)
