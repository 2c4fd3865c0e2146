"""The one owner of ``BackupFailure`` and ``CleanupPass`` rows: what passes record, and
the failures and passes as the API, the UI and ``/metrics`` show them.

Guarantees: failures are bounded (the newest ``MAX_FAILURE_ROWS`` are kept); a pass row
left unfinished by a dead process is closed as interrupted by the next pass; a pass that
crashed is recorded like a backup failure (a failure row without run id).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update

from fastflow.archive import ledger
from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import BackupFailure, CleanupPass, PipelineRun, utcnow
from fastflow.runs.refs import RunRef

MAX_FAILURE_ROWS = 1000


def last_backup_at(ctx: Context) -> datetime | None:
    return ledger.last_archived_at(ctx.db)


# --- what a pass records ----------------------------------------------------------------


def add_failure(db: Database, run: RunRef | None, message: str, pass_id: int | None) -> None:
    with db.session() as s:
        s.add(
            BackupFailure(
                run_id=run.id if run else None,
                pipeline_name=run.pipeline_name if run else None,
                started_at=run.started_at if run else None,
                error_message=message,
                pass_id=pass_id,
                created_at=utcnow(),
            )
        )


def resolve_failures(db: Database, run_id: uuid.UUID | list[uuid.UUID], now: datetime) -> None:
    """The run (or each of the runs) was archived, deleted or truncated: its failures are
    over."""
    ids = run_id if isinstance(run_id, list) else [run_id]
    if not ids:
        return
    with db.session() as s:
        s.execute(
            update(BackupFailure)
            .where(BackupFailure.run_id.in_(ids), BackupFailure.resolved_at.is_(None))
            .values(resolved_at=now)
        )


def resolve_settled(db: Database, pass_id: int | None, *, complete: bool) -> None:
    """Resolve failures that no longer describe a problem: those of runs that are gone
    (deleted, with no pending ledger entry), the pass-level failures (no run id: a crash,
    a lost lock, an incomplete configuration) of earlier passes — this pass ran to its
    end, and a lasting configuration problem was recorded again by it — and, after a
    ``complete`` pass — every due run was tried — every failure not recorded by that pass
    (its run was archived, truncated or is no longer due)."""
    now = utcnow()
    unresolved = BackupFailure.resolved_at.is_(None)
    with db.session() as s:
        s.execute(
            update(BackupFailure)
            .where(
                unresolved,
                BackupFailure.run_id.is_(None),
                or_(BackupFailure.pass_id.is_(None), BackupFailure.pass_id != pass_id),
            )
            .values(resolved_at=now)
        )
        s.execute(
            update(BackupFailure)
            .where(
                unresolved,
                BackupFailure.run_id.is_not(None),
                BackupFailure.run_id.not_in(select(PipelineRun.id)),
                BackupFailure.run_id.not_in(ledger.pending_ids()),
            )
            .values(resolved_at=now)
        )
        if complete:
            s.execute(
                update(BackupFailure)
                .where(
                    unresolved,
                    or_(BackupFailure.pass_id.is_(None), BackupFailure.pass_id != pass_id),
                )
                .values(resolved_at=now)
            )


def prune_failures(db: Database) -> None:
    """Keep the newest ``MAX_FAILURE_ROWS`` failures."""
    with db.session() as s:
        cutoff = s.scalar(
            select(BackupFailure.id)
            .order_by(BackupFailure.id.desc())
            .offset(MAX_FAILURE_ROWS)
            .limit(1)
        )
        if cutoff is not None:
            s.execute(delete(BackupFailure).where(BackupFailure.id <= cutoff))


def open_pass(db: Database, trigger: str) -> tuple[int, datetime]:
    """A new pass row (id, start); any unfinished one belongs to a process that died
    (the caller holds the pass lock)."""
    with db.session() as s:
        s.execute(
            update(CleanupPass)
            .where(CleanupPass.finished_at.is_(None))
            .values(finished_at=utcnow(), error="interrupted (the process ended mid-pass)")
        )
        row = CleanupPass(trigger=trigger, started_at=utcnow())
        s.add(row)
        s.flush()
        return row.id, row.started_at


def close_pass(
    db: Database, pass_id: int | None, summary: dict[str, Any], error: str | None
) -> None:
    data = {k: v for k, v in summary.items() if k != "plan"}
    data["failures"] = data.get("failures", [])[:50]
    with db.session() as s:
        s.execute(
            update(CleanupPass)
            .where(CleanupPass.id == pass_id)
            .values(
                finished_at=utcnow(),
                summary=json.dumps(data),
                archived_runs=data["archived_runs"],
                deleted_runs=data["deleted_runs"],
                backup_failures=data["backup_failures"],
                bytes_archived=data["bytes_archived"],
                error=error or data.get("config_error"),
            )
        )


def record_failed_pass(db: Database, trigger: str, summary: dict[str, Any], error: str) -> int:
    """A finished pass row for a pass whose process died without closing its own, and its
    failure without run id; returns the pass id. Other pass rows are left alone (the
    dead pass's own row, if any, is closed as interrupted by the next pass)."""
    now = utcnow()
    data = {k: v for k, v in summary.items() if k != "plan"}
    with db.session() as s:
        row = CleanupPass(
            trigger=trigger,
            started_at=now,
            finished_at=now,
            summary=json.dumps({**data, "failures": data.get("failures", [])[:50]}),
            archived_runs=0,
            deleted_runs=0,
            backup_failures=1,
            bytes_archived=0,
            error=error,
        )
        s.add(row)
        s.flush()
        s.add(BackupFailure(error_message=error, pass_id=row.id, created_at=now))
        return row.id


def current_pass_started(db: Database) -> datetime | None:
    """Start time of the pass that is running now — or, if it finished a moment ago (a
    409 answer races with its end), of the latest pass."""
    with db.session() as s:
        running = s.scalar(
            select(CleanupPass.started_at)
            .where(CleanupPass.finished_at.is_(None))
            .order_by(CleanupPass.started_at.desc())
            .limit(1)
        )
        if running is not None:
            return running
        return s.scalar(select(CleanupPass.started_at).order_by(CleanupPass.id.desc()).limit(1))


@dataclass(frozen=True)
class PassStats:
    passes: int
    last_duration_s: float | None
    failures_total: int
    failures_unresolved: int


def pass_stats(db: Database) -> PassStats:
    """Counts for ``/metrics``."""
    with db.session() as s:
        passes = s.scalar(select(func.count()).select_from(CleanupPass)) or 0
        last = s.scalar(
            select(CleanupPass.summary)
            .where(CleanupPass.finished_at.is_not(None))
            .order_by(CleanupPass.id.desc())
            .limit(1)
        )
        total = s.scalar(select(func.count()).select_from(BackupFailure)) or 0
        unresolved = (
            s.scalar(
                select(func.count())
                .select_from(BackupFailure)
                .where(BackupFailure.resolved_at.is_(None))
            )
            or 0
        )
    duration = float(json.loads(last).get("duration_s", 0.0)) if last else None
    return PassStats(int(passes), duration, int(total), int(unresolved))


# --- what the API and the UI show ---------------------------------------------------------


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
