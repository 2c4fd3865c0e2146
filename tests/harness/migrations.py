"""A database at an older schema revision, for tests of upgrades."""

from __future__ import annotations

from fastflow.db.engine import Database


def upgrade_to(db: Database, revision: str) -> None:
    """Run fastflow's Alembic migrations on ``db`` up to ``revision`` (not to head), in
    one transaction."""
    from alembic import command
    from alembic.config import Config

    from fastflow.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
