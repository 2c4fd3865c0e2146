"""follow-ups that survive their process: a finished run's retry or triggers still due

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs that ended before this revision were followed up (or never will be): not due
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(
            sa.Column(
                "follow_up_due", sa.Boolean(), nullable=False, server_default=sa.text("false")
            )
        )
    op.create_index(
        "ix_pipeline_runs_follow_up_due",
        "pipeline_runs",
        ["runner_host"],
        sqlite_where=sa.text("follow_up_due"),
        postgresql_where=sa.text("follow_up_due"),
    )


def downgrade() -> None:
    op.drop_index("ix_pipeline_runs_follow_up_due", table_name="pipeline_runs")
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_column("follow_up_due")
