"""Start-up shared by every entry point: file modes, settings, database, migrations,
recovery."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from fastflow import security
from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun
from fastflow.runs import store as runs

log = logging.getLogger("fastflow")


@dataclass
class Context:
    """What every service needs. ``settings`` are the effective settings (environment plus
    the overrides saved in the database); ``base`` are the environment's alone."""

    settings: Settings
    db: Database
    base: Settings = field(default=None)  # type: ignore[assignment]
    # runs that ``bootstrap`` retired because their fastflow process had died, and runs
    # that ended but whose process died before following them up: their retries,
    # triggers and notifications are the caller's (``followup.after_interrupted``)
    interrupted: list[PipelineRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = self.settings

    def reload_settings(self, *, base_validated: bool = False) -> Settings:
        """Re-read the stored overrides (after a change through the API). With
        ``base_validated`` (``base`` is what ``load_settings`` returned, as at start-up)
        and nothing stored, ``base`` is the result without a second validation."""
        from fastflow.db import settings_store

        overrides = settings_store.load_overrides(self.db, self.base)
        if base_validated and not overrides:
            self.settings = self.base.model_copy()
        else:
            self.settings = settings_store.effective(self.base, overrides)
        security.install_log_redaction(self.settings)
        return self.settings


def bootstrap(settings: Settings, *, recover: bool = True) -> Context:
    """Set the process umask to ``FASTFLOW_UMASK`` (default 077: every file fastflow
    creates from here on — database, logs, metrics, locks, downloads — is private to
    its user), open the database (saying where, when a new SQLite file is created),
    apply migrations and stored setting overrides, fail runs orphaned by a dead process
    and collect the finished runs such a process did not follow up."""
    from fastflow.runs import isolation

    os.umask(settings.fastflow_umask)
    isolation.ensure_data_dir(settings)
    db = Database(settings)
    if db.new_file is not None:
        _announce(f"creating a new database at {db.new_file}")
    db.migrate()
    isolation.secure_data_dir(settings)
    ctx = Context(settings=settings, db=db)
    ctx.reload_settings(base_validated=True)
    security.install_log_redaction(ctx.settings)
    if recover:
        runs.recover_orphans(db, ctx.settings.logs_root, failed=ctx.interrupted)
        # and runs that ended, but whose process died before queuing their follow-up
        ctx.interrupted += runs.unfollowed(db, runs.runner_alive, this_host=True)
    return ctx


def _announce(message: str) -> None:
    """A log line where logging is set up (``fastflow serve``), else one stderr line."""
    if logging.getLogger().handlers:
        log.info(message)
    else:
        print(f"fastflow: {message}", file=sys.stderr, flush=True)
