"""statistics: indexes for the overview dashboard and the pipeline pages; disk samples

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs per day and status: one index range per (status, day), counted in the index
    op.create_index("ix_pipeline_runs_status_started", "pipeline_runs", ["status", "started_at"])
    # a pipeline's runs of the last days with status and duration, from the index alone
    op.create_index(
        "ix_pipeline_runs_pipeline_stats",
        "pipeline_runs",
        ["pipeline_name", "started_at", "status", "finished_at"],
    )
    # the local log bytes: sums over ranges of this partial index, not over the table
    op.create_index(
        "ix_pipeline_runs_local_log_size",
        "pipeline_runs",
        ["finished_at", "log_size"],
        sqlite_where=sa.text("log_file IS NOT NULL"),
        postgresql_where=sa.text("log_file IS NOT NULL"),
    )
    op.create_table(
        "disk_samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("pass_id", sa.Integer(), nullable=True),
        sa.Column("local_log_bytes", sa.BigInteger(), nullable=False),
        sa.Column("free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("archived_bytes", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_disk_samples_taken", "disk_samples", ["taken_at"])


def downgrade() -> None:
    op.drop_index("ix_disk_samples_taken", table_name="disk_samples")
    op.drop_table("disk_samples")
    op.drop_index("ix_pipeline_runs_local_log_size", table_name="pipeline_runs")
    op.drop_index("ix_pipeline_runs_pipeline_stats", table_name="pipeline_runs")
    op.drop_index("ix_pipeline_runs_status_started", table_name="pipeline_runs")
