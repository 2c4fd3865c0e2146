"""pipeline secrets (encrypted) and the reason a run did not succeed

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))
    op.create_table(
        "pipeline_secrets",
        sa.Column("name", sa.String(length=255), primary_key=True),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pipeline_secrets")
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_column("failure_reason")
