"""One cleanup pass: lock -> sweep -> resume -> plan -> archive -> record -> delete -> report.

Safety invariants (each proven by a test; the executor's are listed in ``passrun``):
- a local file is deleted only after the server confirmed an object with its exact size
  and SHA-256, the ``archived_runs`` row is committed and the file is unchanged — unless
  S3 backup is disabled, or the run has no file at all;
- S3 enabled but incompletely configured deletes and truncates nothing that needs an
  archive;
- PENDING and RUNNING runs are never touched (see ``retention``);
- a crash at any instant is completed by the next pass (``resume`` first finishes every
  ledger entry whose local files were not yet deleted);
- one pass at a time across processes (``PassLock``); a pass that loses its lock stops
  before its next destructive step, records why, and reports what it did until then;
- memory is bounded: candidates come from SQL in batches, uploads stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import delete, or_, select, update

from fastflow.archive import s3 as archive
from fastflow.archive.s3 import ArchiveStore
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import ArchivedRun, BackupFailure, CleanupPass, PipelineRun, utcnow
from fastflow.errors import ArchiveNotConfigured, PassLockLost
from fastflow.lifecycle import selection
from fastflow.lifecycle.executor import PassRun, pipeline_policy
from fastflow.lifecycle.lock import PassLock
from fastflow.lifecycle.policy import Action
from fastflow.lifecycle.resume import resume
from fastflow.lifecycle.summary import Failure, PassSummary, Progress
from fastflow.lifecycle.truncate import remove_journaled_temp
from fastflow.runs import files as logfiles
from fastflow.security import redact

__all__ = ["Failure", "PassSummary", "Progress", "pipeline_policy", "run_pass"]

MAX_FAILURE_ROWS = 1000
MAX_PLAN_LINES = 10_000


def _open_store(ctx: Context) -> tuple[ArchiveStore | None, str | None]:
    """The store when S3 backup is enabled; with an incomplete configuration, the error."""
    if not ctx.settings.s3_backup_enabled:
        return None, None
    try:
        return archive.open_store(ctx.settings), None
    except ArchiveNotConfigured as e:
        return None, str(e)


def _plan_only(
    ctx: Context, summary: PassSummary, now: datetime, sink: Callable[[str], None] | None
) -> PassSummary:
    """Count the plan; each line goes to ``sink`` (streamed, constant memory) or, without
    one, into ``summary.plan`` (the first ``MAX_PLAN_LINES``)."""

    def emit(actions: list[Action]) -> None:
        for action in actions:
            if sink is not None:
                sink(action.describe())
            elif len(summary.plan) < MAX_PLAN_LINES:
                summary.plan.append(action.describe())

    for name in selection.pipeline_names(ctx.db):
        policy = pipeline_policy(ctx.settings, name)
        for batch in selection.deletion_candidates(ctx.db, name, policy, now):
            summary.planned_runs += len(batch)
            emit(batch)
        for batch in selection.truncation_candidates(
            ctx.db, name, policy, now, ctx.settings.logs_root
        ):
            summary.planned_truncations += len(batch)
            emit(batch)
    return summary


def current_pass_started(ctx: Context) -> datetime | None:
    """Start time of the pass that is running now — or, if it finished a moment ago (a
    409 answer races with its end), of the latest pass."""
    with ctx.db.session() as s:
        running = s.scalar(
            select(CleanupPass.started_at)
            .where(CleanupPass.finished_at.is_(None))
            .order_by(CleanupPass.started_at.desc())
            .limit(1)
        )
        if running is not None:
            return running
        return s.scalar(select(CleanupPass.started_at).order_by(CleanupPass.id.desc()).limit(1))


def run_pass(
    ctx: Context,
    trigger: str,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    plan_sink: Callable[[str], None] | None = None,
) -> PassSummary:
    """Run one cleanup pass; raise ``PassAlreadyRunning`` if another one holds the lock.

    A pass that loses its lock midway returns its summary with ``error`` set and a
    recorded failure (the CLI then exits 1)."""
    started = time.monotonic()
    now = now or utcnow()
    summary = PassSummary(trigger=trigger, dry_run=dry_run, started_at=utcnow().isoformat())
    store, config_error = _open_store(ctx)
    summary.config_error = config_error
    if dry_run:
        _plan_only(ctx, summary, now, plan_sink)
        summary.duration_s = round(time.monotonic() - started, 3)
        return summary
    with PassLock(ctx.db) as lock:
        _open_pass_row(ctx, summary)
        p = PassRun(ctx, summary, now, store, progress, lock)
        error: str | None = None
        try:
            _sweep_temp_files(p)
            if config_error is not None:
                p.record_failure(None, config_error)
            resume(p)
            _execute(ctx, p)
            _resolve_settled_failures(ctx, p)
        except PassLockLost as e:
            error = summary.error = str(e)
            _record_lock_loss(p, error)
        except Exception as e:
            error = f"{type(e).__name__}: {redact(str(e), ctx.settings)}"
            raise
        finally:
            readcache.invalidate()
            summary.finished_at = utcnow().isoformat()
            summary.duration_s = round(time.monotonic() - started, 3)
            _close_pass_row(ctx, summary, error)
            _prune_failures(ctx)
    return summary


def _execute(ctx: Context, p: PassRun) -> None:
    workers = ctx.settings.s3_max_concurrency
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive") as pool:
        for name in selection.pipeline_names(ctx.db):
            policy = p.policy(name)
            for batch in selection.deletion_candidates(ctx.db, name, policy, p.now):
                p.bump(planned_runs=len(batch))
                list(pool.map(p.archive_then_remove, batch))
    for name in selection.pipeline_names(ctx.db):
        policy = p.policy(name)
        if policy.max_log_bytes is None:
            continue
        for batch in selection.truncation_candidates(ctx.db, name, policy, p.now, p.logs_root):
            p.bump(planned_truncations=len(batch))
            for action in batch:
                p.truncate(action, policy.max_log_bytes)


def _sweep_temp_files(p: PassRun) -> None:
    """Remove what a killed pass left: the truncation temp file named in the journal and
    compression temp files (only passes create either, and this one holds the lock)."""
    removed = 1 if remove_journaled_temp(p.journal) is not None else 0
    tmp_dir = p.settings.data_dir.expanduser().resolve() / "tmp"
    if tmp_dir.is_dir():
        for part in tmp_dir.glob("archive-*.part"):
            removed += logfiles.remove_quietly(part)
    p.bump(stale_temp_files_removed=removed)


def _record_lock_loss(p: PassRun, error: str) -> None:
    try:
        with p.db.session() as s:
            s.add(BackupFailure(error_message=error, pass_id=p.summary.pass_id))
    except Exception:  # the database itself may be what went away; the summary says it
        pass
    p.summary.failures.append(Failure(None, None, None, error))
    p.bump(backup_failures=1)


def _open_pass_row(ctx: Context, summary: PassSummary) -> None:
    with ctx.db.session() as s:
        # we hold the lock: any unfinished pass row belongs to a process that died
        s.execute(
            update(CleanupPass)
            .where(CleanupPass.finished_at.is_(None))
            .values(finished_at=utcnow(), error="interrupted (the process ended mid-pass)")
        )
        row = CleanupPass(trigger=summary.trigger, started_at=utcnow())
        s.add(row)
        s.flush()
        summary.pass_id = row.id
        summary.started_at = row.started_at.isoformat()


def _close_pass_row(ctx: Context, summary: PassSummary, error: str | None) -> None:
    data = summary.to_dict()
    data.pop("plan", None)
    data["failures"] = data["failures"][:50]
    with ctx.db.session() as s:
        s.execute(
            update(CleanupPass)
            .where(CleanupPass.id == summary.pass_id)
            .values(
                finished_at=utcnow(),
                summary=json.dumps(data),
                archived_runs=summary.archived_runs,
                deleted_runs=summary.deleted_runs,
                backup_failures=summary.backup_failures,
                bytes_archived=summary.bytes_archived,
                error=error or summary.config_error,
            )
        )


def _resolve_settled_failures(ctx: Context, p: PassRun) -> None:
    """Resolve failures that no longer describe a problem: those of runs that are gone
    (archived and deleted, or deleted) and, after a complete pass — every due run was
    tried — those of runs that did not fail again (archived, truncated or no longer due),
    and pass-level failures (configuration, unreachable server) once archiving works."""
    now = utcnow()
    complete = p.store is not None and not p.incomplete
    pending = select(ArchivedRun.run_id).where(ArchivedRun.local_deleted_at.is_(None))
    unresolved = BackupFailure.resolved_at.is_(None)
    with ctx.db.session() as s:
        s.execute(
            update(BackupFailure)
            .where(
                unresolved,
                BackupFailure.run_id.is_not(None),
                BackupFailure.run_id.not_in(select(PipelineRun.id)),
                BackupFailure.run_id.not_in(pending),
            )
            .values(resolved_at=now)
        )
        if complete:
            s.execute(
                update(BackupFailure)
                .where(
                    unresolved,
                    or_(
                        BackupFailure.pass_id.is_(None),
                        BackupFailure.pass_id != p.summary.pass_id,
                    ),
                )
                .values(resolved_at=now)
            )


def _prune_failures(ctx: Context) -> None:
    """Keep the newest ``MAX_FAILURE_ROWS`` failures."""
    with ctx.db.session() as s:
        cutoff = s.scalar(
            select(BackupFailure.id)
            .order_by(BackupFailure.id.desc())
            .offset(MAX_FAILURE_ROWS)
            .limit(1)
        )
        if cutoff is not None:
            s.execute(delete(BackupFailure).where(BackupFailure.id <= cutoff))
