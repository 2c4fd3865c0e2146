"""system incidents (archive integrity, disk pressure: one row per kind and key); an
index on archived_runs.manifest_key (each pass looks up the entries no manifest lists)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "system_incidents",
        sa.Column("kind", sa.String(length=32), primary_key=True),
        sa.Column("key", sa.String(length=255), primary_key=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("last_announced_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("announcements", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_system_incidents_closed", "system_incidents", ["closed_at"])
    op.create_index("ix_archived_runs_manifest", "archived_runs", ["manifest_key"])


def downgrade() -> None:
    op.drop_index("ix_archived_runs_manifest", table_name="archived_runs")
    op.drop_index("ix_system_incidents_closed", table_name="system_incidents")
    op.drop_table("system_incidents")
