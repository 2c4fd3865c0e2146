"""Backup failures and passes as the API and UI show them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from fastflow.context import Context
from fastflow.db.models import ArchivedRun, BackupFailure, CleanupPass


def last_backup_at(ctx: Context) -> datetime | None:
    with ctx.db.session() as s:
        return s.scalar(select(func.max(ArchivedRun.archived_at)))


def recent_failures(ctx: Context, limit: int = 100) -> list[dict[str, Any]]:
    """Unresolved first, then newest first."""
    q = (
        select(BackupFailure)
        .order_by(
            case((BackupFailure.resolved_at.is_(None), 0), else_=1),
            BackupFailure.created_at.desc(),
            BackupFailure.id.desc(),
        )
        .limit(limit)
    )
    with ctx.db.session() as s:
        return [f.to_dict() for f in s.scalars(q)]


def unresolved_count(ctx: Context) -> int:
    with ctx.db.session() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(BackupFailure)
                .where(BackupFailure.resolved_at.is_(None))
            )
            or 0
        )


def recent_passes(ctx: Context, limit: int = 20) -> list[dict[str, Any]]:
    q = select(CleanupPass).order_by(CleanupPass.id.desc()).limit(limit)
    with ctx.db.session() as s:
        out = []
        for p in s.scalars(q):
            summary = json.loads(p.summary) if p.summary else {}
            summary.pop("failures", None)
            out.append(
                {
                    "id": p.id,
                    "trigger": p.trigger,
                    "started_at": p.started_at.isoformat(),
                    "finished_at": p.finished_at.isoformat() if p.finished_at else None,
                    "archived_runs": p.archived_runs,
                    "deleted_runs": p.deleted_runs,
                    "backup_failures": p.backup_failures,
                    "bytes_archived": p.bytes_archived,
                    "error": p.error,
                    "summary": summary,
                }
            )
        return out
