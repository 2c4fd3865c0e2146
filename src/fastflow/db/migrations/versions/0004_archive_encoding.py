"""archive ledger: encoding and original size/SHA-256 (S3_COMPRESSION)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("encoding", sa.String(length=16)),
    ("log_original_size", sa.BigInteger()),
    ("log_original_sha256", sa.String(length=64)),
    ("metrics_original_size", sa.BigInteger()),
    ("metrics_original_sha256", sa.String(length=64)),
)


def upgrade() -> None:
    with op.batch_alter_table("archived_runs") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("archived_runs") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
