"""archive before truncate (ledger: truncated copy), pipeline process group of a run

Revision ID: 0005
Revises: 0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LEDGER_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("log_truncated_at", sa.DateTime()),
    ("local_log_size", sa.BigInteger()),
    ("local_log_sha256", sa.String(length=64)),
)
RUN_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("pipeline_pid", sa.Integer()),
    ("pipeline_started", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("archived_runs") as batch:
        for name, type_ in LEDGER_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("pipeline_runs") as batch:
        for name, type_ in RUN_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        for name, _ in RUN_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("archived_runs") as batch:
        for name, _ in LEDGER_COLUMNS:
            batch.drop_column(name)
