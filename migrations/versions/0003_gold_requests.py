"""Requests the API hands to the worker: roll the lineage back to gold, write the export.

Revision ID: 0003_gold_requests
Revises: 0002_requests
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_gold_requests"
down_revision: str | Sequence[str] | None = "0002_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("control") as batch:
        batch.add_column(
            sa.Column("rollback_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("export_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("control") as batch:
        batch.drop_column("export_requested_at")
        batch.drop_column("rollback_requested_at")
