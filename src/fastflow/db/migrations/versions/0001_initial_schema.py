"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 12:08:12.877679
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "archived_runs",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("pipeline_name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("triggered_by", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("log_key", sa.Text(), nullable=True),
        sa.Column("log_size", sa.BigInteger(), nullable=True),
        sa.Column("log_sha256", sa.String(length=64), nullable=True),
        sa.Column("metrics_key", sa.Text(), nullable=True),
        sa.Column("metrics_size", sa.BigInteger(), nullable=True),
        sa.Column("metrics_sha256", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("archived_at", sa.DateTime(), nullable=False),
        sa.Column("local_deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("archived_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_archived_runs_pipeline_started", ["pipeline_name", "started_at"], unique=False
        )

    op.create_table(
        "backup_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("pipeline_name", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("pass_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("backup_failures", schema=None) as batch_op:
        batch_op.create_index("ix_backup_failures_created", ["created_at"], unique=False)
        batch_op.create_index("ix_backup_failures_run", ["run_id"], unique=False)

    op.create_table(
        "cleanup_passes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("archived_runs", sa.Integer(), nullable=False),
        sa.Column("deleted_runs", sa.Integer(), nullable=False),
        sa.Column("backup_failures", sa.Integer(), nullable=False),
        sa.Column("bytes_archived", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("pipeline_name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("triggered_by", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("log_file", sa.Text(), nullable=True),
        sa.Column("metrics_file", sa.Text(), nullable=True),
        sa.Column("log_size", sa.BigInteger(), nullable=True),
        sa.Column("runner_host", sa.String(length=255), nullable=True),
        sa.Column("runner_pid", sa.Integer(), nullable=True),
        sa.Column("runner_started", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_pipeline_runs_pipeline_started", ["pipeline_name", "started_at"], unique=False
        )
        batch_op.create_index("ix_pipeline_runs_started", ["started_at"], unique=False)
        batch_op.create_index("ix_pipeline_runs_status", ["status"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_runs_status")
        batch_op.drop_index("ix_pipeline_runs_started")
        batch_op.drop_index("ix_pipeline_runs_pipeline_started")

    op.drop_table("pipeline_runs")
    op.drop_table("cleanup_passes")
    with op.batch_alter_table("backup_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_backup_failures_run")
        batch_op.drop_index("ix_backup_failures_created")

    op.drop_table("backup_failures")
    with op.batch_alter_table("archived_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_archived_runs_pipeline_started")

    op.drop_table("archived_runs")
