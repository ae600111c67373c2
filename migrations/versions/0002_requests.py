"""Requests the API hands to the worker: cancel the file in training, save a checkpoint.

Revision ID: 0002_requests
Revises: 0001_initial
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_requests"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("control") as batch:
        batch.add_column(
            sa.Column("checkpoint_requested_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("control") as batch:
        batch.drop_column("checkpoint_requested_at")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("cancel_requested_at")
