"""orchestration: queued runs, attempts, upstream links, schedule ticks, webhooks

Revision ID: 0006
Revises: 0005
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RUN_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("attempt", sa.Integer()),
    ("retry_of", sa.Uuid()),
    ("upstream_run_id", sa.Uuid()),
    ("scheduled_for", sa.DateTime()),
    ("queued_at", sa.DateTime()),
    ("not_before", sa.DateTime()),
    ("run_config_id", sa.String(length=100)),
    ("schedule_key", sa.String(length=100)),
    ("env_overrides", sa.Text()),
    ("cancel_requested_at", sa.DateTime()),
)


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        for name, type_ in RUN_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index(
        "ux_pipeline_runs_schedule_tick",
        "pipeline_runs",
        ["pipeline_name", "schedule_key", "scheduled_for"],
        unique=True,
    )
    op.create_index("ix_pipeline_runs_queue", "pipeline_runs", ["status", "queued_at"])
    op.create_table(
        "schedule_ticks",
        sa.Column("pipeline_name", sa.String(length=255), primary_key=True),
        sa.Column("schedule_key", sa.String(length=100), primary_key=True),
        sa.Column("scheduled_for", sa.DateTime(), primary_key=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pipeline_name", sa.String(length=255), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("run_config_id", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_webhooks_pipeline", "webhooks", ["pipeline_name"])


def downgrade() -> None:
    op.drop_index("ix_webhooks_pipeline", table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_table("schedule_ticks")
    op.drop_index("ix_pipeline_runs_queue", table_name="pipeline_runs")
    op.drop_index("ux_pipeline_runs_schedule_tick", table_name="pipeline_runs")
    with op.batch_alter_table("pipeline_runs") as batch:
        for name, _ in RUN_COLUMNS:
            batch.drop_column(name)
