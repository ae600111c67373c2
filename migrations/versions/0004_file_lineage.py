"""Which lineage trained each file, so the worker can tell a file the checkpoints lost
(reopened) from one an earlier lineage trained (left alone).

Revision ID: 0004_file_lineage
Revises: 0003_gold_requests
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_file_lineage"
down_revision: str | Sequence[str] | None = "0003_gold_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("lineage_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("lineage_id")
