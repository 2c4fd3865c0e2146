"""executors (issue 15): where a run executes, its container image and container id

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("executor", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("image", sa.Text(), nullable=True))
        batch.add_column(sa.Column("container_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_column("container_id")
        batch.drop_column("image")
        batch.drop_column("executor")
