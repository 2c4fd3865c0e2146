"""Start-up shared by every entry point: settings, database, migrations, recovery."""

from __future__ import annotations

from dataclasses import dataclass

from fastflow import runs
from fastflow.config import Settings
from fastflow.db import Database


@dataclass
class Context:
    settings: Settings
    db: Database


def bootstrap(settings: Settings, *, recover: bool = True) -> Context:
    """Open the database, apply migrations, and fail runs orphaned by a dead process."""
    db = Database(settings)
    db.migrate()
    if recover:
        runs.recover_orphans(db, settings.logs_root)
    return Context(settings=settings, db=db)
