"""pins of archived runs: a run whose row retention deleted is pinned on its ledger entry

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archived_runs") as batch:
        batch.add_column(sa.Column("pinned_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("pinned_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("pin_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("archived_runs") as batch:
        batch.drop_column("pin_reason")
        batch.drop_column("pinned_by")
        batch.drop_column("pinned_at")
