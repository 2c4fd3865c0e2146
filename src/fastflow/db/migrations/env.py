"""Alembic environment: always run online on the connection passed by ``db.migrate``."""

from __future__ import annotations

from alembic import context

import fastflow.notify.models  # noqa: F401 - registers the notification tables
from fastflow.db.models import Base, add_postgresql_options

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable via the alembic CLI
    raise RuntimeError("run migrations through fastflow (fastflow.db.migrate)")

add_postgresql_options()  # what autogenerate compares with on PostgreSQL
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
