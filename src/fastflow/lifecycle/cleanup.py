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

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from fastflow.archive import s3 as archive
from fastflow.archive.store import ArchiveStore
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import utcnow
from fastflow.environments import collector as env_collector
from fastflow.errors import ArchiveNotConfigured, PassLockLost
from fastflow.lifecycle import oversized, records, selection
from fastflow.lifecycle.executor import PassRun, pipeline_policy
from fastflow.lifecycle.lock import PassLock
from fastflow.lifecycle.policy import Action
from fastflow.lifecycle.resume import resume
from fastflow.lifecycle.summary import Failure, PassSummary, Progress
from fastflow.lifecycle.truncate import remove_journaled_temp
from fastflow.runs import files as logfiles
from fastflow.security import redact

__all__ = ["Failure", "PassSummary", "Progress", "pipeline_policy", "run_pass"]

MAX_PLAN_LINES = 10_000
log = logging.getLogger(__name__)


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
    """Start time of the running pass (or of the latest, if it just ended)."""
    return records.current_pass_started(ctx.db)


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
            records.resolve_settled(
                ctx.db, summary.pass_id, complete=store is not None and not p.incomplete
            )
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
            records.close_pass(ctx.db, summary.pass_id, summary.to_dict(), error)
            records.prune_failures(ctx.db)
    try:  # environments unused for ENV_RETENTION_DAYS; never fails or aborts the pass
        env_collector.collect(ctx.settings, now=now)
    except Exception as e:
        log.warning("collecting unused environments failed: %s", redact(str(e), ctx.settings))
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
                oversized.truncate(p, action, policy.max_log_bytes)


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
        records.add_failure(p.db, None, error, p.summary.pass_id)
    except Exception:  # the database itself may be what went away; the summary says it
        pass
    p.summary.failures.append(Failure(None, None, None, error))
    p.bump(backup_failures=1)


def _open_pass_row(ctx: Context, summary: PassSummary) -> None:
    pass_id, started = records.open_pass(ctx.db, summary.trigger)
    summary.pass_id, summary.started_at = pass_id, started.isoformat()
