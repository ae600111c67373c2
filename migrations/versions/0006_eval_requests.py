"""The operator's request for an evaluation (``POST /v1/eval``, ``traind eval``).

Revision ID: 0006_eval_requests
Revises: 0005_rolled_back
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_eval_requests"
down_revision: str | Sequence[str] | None = "0005_rolled_back"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("control") as batch:
        batch.add_column(sa.Column("eval_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("control") as batch:
        batch.drop_column("eval_requested_at")
