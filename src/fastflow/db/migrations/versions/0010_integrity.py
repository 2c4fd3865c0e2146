"""integrity: run pins, manifests, archive verifications, verification times

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("pinned_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("pinned_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("pin_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("archived_runs") as batch:
        batch.add_column(sa.Column("manifest_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("verified_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("deep_verified_at", sa.DateTime(), nullable=True))
    op.create_table(
        "archive_manifests",
        sa.Column("key", sa.String(length=1024), primary_key=True),
        sa.Column("pass_id", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("previous_sha256", sa.String(length=64), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_archive_manifests_created", "archive_manifests", ["created_at"])
    op.create_table(
        "archive_verifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("objects_checked", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("objects_deep_checked", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("objects_damaged", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("manifests_checked", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("problems", sa.Text(), nullable=True),  # JSON list, bounded
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_archive_verifications_started", "archive_verifications", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_archive_verifications_started", table_name="archive_verifications")
    op.drop_table("archive_verifications")
    op.drop_index("ix_archive_manifests_created", table_name="archive_manifests")
    op.drop_table("archive_manifests")
    with op.batch_alter_table("archived_runs") as batch:
        for name in ("deep_verified_at", "verified_at", "manifest_key"):
            batch.drop_column(name)
    with op.batch_alter_table("pipeline_runs") as batch:
        for name in ("pin_reason", "pinned_by", "pinned_at"):
            batch.drop_column(name)
