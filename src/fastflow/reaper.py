"""Delete local files and run rows — only for runs whose archive is verified.

Every function here is idempotent: a file already gone counts as deleted, a row already
gone is not an error, so a pass interrupted at any instant can simply be run again.
The callers (``cleanup``) guarantee the precondition: a committed ``archived_runs`` row
for the run (or S3 backup disabled, or nothing to archive).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update

from fastflow import logfiles
from fastflow.db import Database
from fastflow.models import ArchivedRun, BackupFailure, PipelineRun


@dataclass
class Removed:
    log: bool = False
    metrics: bool = False


def delete_files(logs_root: Path, log_file: str | None, metrics_file: str | None) -> Removed:
    """Delete the run's log and metrics files and its then-empty folders."""
    removed = Removed()
    folder: Path | None = None
    for rel, attr in ((log_file, "log"), (metrics_file, "metrics")):
        if rel is None:
            continue
        path = logfiles.resolve(logs_root, rel)
        folder = path.parent
        setattr(removed, attr, logfiles.remove_quietly(path))
    if folder is not None:
        logfiles.remove_empty_dirs(folder, logs_root)
    return removed


def delete_run_row(db: Database, run_id: uuid.UUID, now: datetime, *, archived: bool) -> bool:
    """Delete the run row; mark its ledger entry as locally deleted in the same commit."""
    with db.session() as s:
        result = s.execute(delete(PipelineRun).where(PipelineRun.id == run_id))
        gone = cast(CursorResult[Any], result).rowcount
        if archived:
            s.execute(
                update(ArchivedRun)
                .where(ArchivedRun.run_id == run_id, ArchivedRun.local_deleted_at.is_(None))
                .values(local_deleted_at=now)
            )
    return bool(gone)


def drop_file_columns(db: Database, run_id: uuid.UUID, now: datetime, *, archived: bool) -> None:
    """Fallback end state: the run stays, without ``log_file``/``metrics_file``."""
    with db.session() as s:
        s.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id)
            .values(log_file=None, metrics_file=None, log_size=None)
        )
        if archived:
            s.execute(
                update(ArchivedRun)
                .where(ArchivedRun.run_id == run_id, ArchivedRun.local_deleted_at.is_(None))
                .values(local_deleted_at=now)
            )


def resolve_failures(db: Database, run_id: uuid.UUID, now: datetime) -> None:
    with db.session() as s:
        s.execute(
            update(BackupFailure)
            .where(BackupFailure.run_id == run_id, BackupFailure.resolved_at.is_(None))
            .values(resolved_at=now)
        )
