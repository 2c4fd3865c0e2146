"""One cleanup pass: lock -> sweep -> resume -> plan -> archive -> record -> delete ->
manifest -> report.

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
- memory is bounded: candidates come from SQL in batches, uploads stream;
- every ledger entry is listed in the bucket's hash-chained manifest by the pass that
  wrote it or, if that pass died or could not write its manifest, by the next one;
- a pass that crashes (any exception: a database fault, an unreadable LOGS_DIR entry, a
  bug) is recorded like a backup failure — the pass row closed with the error, a failure
  without run id, ``summary.error`` set — and returns its summary, so that every caller
  notifies as after a failed backup; a crashed dry run raises one ``FastflowError`` line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from fastflow.archive import manifests
from fastflow.archive import s3 as archive
from fastflow.archive.store import ArchiveStore
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import utcnow
from fastflow.environments import collector as env_collector
from fastflow.errors import (
    ArchiveError,
    ArchiveNotConfigured,
    FastflowError,
    LogsDirUnavailable,
    PassAlreadyRunning,
    PassLockLost,
)
from fastflow.lifecycle import batch as batches
from fastflow.lifecycle import disk, oversized, records, selection
from fastflow.lifecycle.executor import PassRun, pass_policy, pipeline_policy
from fastflow.lifecycle.lock import PassLock
from fastflow.lifecycle.policy import Action
from fastflow.lifecycle.resume import resume
from fastflow.lifecycle.summary import Failure, PassSummary, PlanEntry, Progress
from fastflow.lifecycle.truncate import remove_journaled_temp
from fastflow.runs import files as logfiles
from fastflow.runs import logsdir
from fastflow.runs import stats as runstats
from fastflow.security import redact

__all__ = [
    "Failure",
    "PassSummary",
    "Progress",
    "crash_message",
    "pipeline_policy",
    "record_crashed_pass",
    "run_pass",
]

MAX_PLAN_LINES = 10_000
MAX_ERROR_CHARS = 400
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
                summary.plan.append(PlanEntry.of(action))

    for name in selection.pipeline_names(ctx.db):
        policy, problem = pass_policy(ctx.settings, name)
        if policy is None:
            summary.failures.append(Failure(None, name, None, str(problem)))
            continue
        for batch in selection.deletion_candidates(ctx.db, name, policy, now):
            summary.planned_runs += len(batch)
            emit(batch)
        for batch in selection.truncation_candidates(
            ctx.db, name, policy, now, ctx.settings.logs_root
        ):
            summary.planned_truncations += len(batch)
            emit(batch)
        for batch in selection.kept_candidates(ctx.db, name, policy, now):
            summary.kept_runs += len(batch)
            emit(batch)
    return summary


def current_pass_started(ctx: Context) -> datetime | None:
    """Start time of the running pass (or of the latest, if it just ended)."""
    return records.current_pass_started(ctx.db)


def busy_with_start(ctx: Context, e: PassAlreadyRunning) -> PassAlreadyRunning:
    """``e`` saying when the running pass started (message and ``started_at``), as the
    API's 409 and ``fastflow cleanup`` (exit 3) both report it."""
    started = current_pass_started(ctx)
    if started is None:
        return e
    return PassAlreadyRunning(
        f"{e} (started {started.isoformat()})", started_at=started.isoformat()
    )


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
    if dry_run:
        try:
            summary.config_error = _open_store(ctx)[1]
            missing = logsdir.problem(ctx.db, ctx.settings.logs_root, mark=False)
            if missing is not None:  # the pass would act on nothing: nothing to plan
                summary.failures.append(Failure(None, None, None, missing))
                summary.backup_failures = 1
            else:
                _plan_only(ctx, summary, now, plan_sink)
        except FastflowError:
            raise
        except Exception as e:
            raise FastflowError(crash_message(e, ctx, "the cleanup plan failed")) from None
        summary.duration_s = round(time.monotonic() - started, 3)
        return summary
    with PassLock(ctx.db) as lock:
        _open_pass_row(ctx, summary)
        error: str | None = None
        try:
            store, config_error = _open_store(ctx)
            summary.config_error = config_error
            p = PassRun(ctx, summary, now, store, progress, lock)
            _sweep_temp_files(p)
            if config_error is not None:
                p.record_failure(None, config_error)
            missing = logsdir.problem(ctx.db, ctx.settings.logs_root)
            if missing is not None:  # an unmounted volume: no run is "already gone"
                p.record_failure(None, missing)
                p.incomplete = True
            else:
                try:
                    resume(p)
                    _execute(ctx, p)
                    p.logs_dir_held()  # (truncations skip a log gone with the volume)
                except LogsDirUnavailable as e:  # gone mid-pass: what is left waits
                    p.record_failure(None, str(e))
                    p.incomplete = True
            _write_manifest(p)
            _abort_stale_uploads(p)
            records.resolve_settled(
                ctx.db, summary.pass_id, complete=store is not None and not p.incomplete
            )
        except PassLockLost as e:
            error = summary.error = str(e)
            _record_pass_failure(ctx, summary, error)
        except Exception as e:
            # after a lost lock, what broke may be the other pass's doing (it sweeps the
            # temp files of killed passes): the lost lock is the error to report
            lost = _lock_lost(lock)
            error = summary.error = lost or crash_message(e, ctx)
            log.debug("cleanup pass %s crashed", summary.pass_id, exc_info=True)
            _record_pass_failure(ctx, summary, error)
        finally:
            readcache.invalidate()
            summary.finished_at = utcnow().isoformat()
            summary.duration_s = round(time.monotonic() - started, 3)
            try:
                records.close_pass(ctx.db, summary.pass_id, summary.to_dict(), error)
                records.prune_failures(ctx.db)
            except Exception:
                if error is None:
                    raise
                log.debug("cannot close the crashed pass %s", summary.pass_id, exc_info=True)
    disk.check(ctx, now=now)  # the disk-pressure incident (issue 16); never raises
    try:  # the disk after the pass: the overview's disk chart (issue 18)
        runstats.record_disk_sample(ctx.db, ctx.settings.logs_root, summary.pass_id)
    except Exception as e:
        log.warning("recording the disk sample failed: %s", redact(str(e), ctx.settings))
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
            if policy is None:
                continue
            for batch in selection.deletion_candidates(ctx.db, name, policy, p.now):
                p.bump(planned_runs=len(batch))
                batches.run_actions(p, pool, batch)
    for name in selection.pipeline_names(ctx.db):
        policy = p.policy(name)
        if policy is None or policy.max_log_bytes is None:
            continue
        for batch in selection.truncation_candidates(ctx.db, name, policy, p.now, p.logs_root):
            p.bump(planned_truncations=len(batch))
            for action in batch:
                oversized.truncate(p, action, policy.max_log_bytes)


def _lock_lost(lock: PassLock) -> str | None:
    """The ``PassLockLost`` message when the pass no longer holds its lock, else None."""
    try:
        lock.check()
    except PassLockLost as e:
        return str(e)
    return None


def _write_manifest(p: PassRun) -> None:
    """The pass's manifest of every entry no manifest lists yet (``archive.manifests``);
    a failure is recorded like a backup failure, and the next pass lists them."""
    if not isinstance(p.store, archive.S3Store) or p.circuit_open:
        return
    p.guard()
    try:
        manifests.write_for_pass(p.ctx, p.store, p.summary.pass_id)
    except ArchiveError as e:
        p.record_failure(None, ArchiveError(f"the archive manifest was not written: {e}"))


def _sweep_temp_files(p: PassRun) -> None:
    """Remove what a killed pass left: the truncation temp file named in the journal and
    compression temp files (only passes create either, and this one holds the lock)."""
    removed = 1 if remove_journaled_temp(p.journal, p.logs_root) is not None else 0
    tmp_dir = p.settings.data_dir.expanduser().resolve() / "tmp"
    if tmp_dir.is_dir():
        for part in tmp_dir.glob("archive-*.part"):
            removed += logfiles.remove_quietly(part)
    p.bump(stale_temp_files_removed=removed)


STALE_UPLOAD_AGE = timedelta(hours=24)  # no upload of a live pass is this old


def _abort_stale_uploads(p: PassRun) -> None:
    """Abort the multipart uploads a killed pass left (older than ``STALE_UPLOAD_AGE``;
    this pass holds the lock, and an upload times out long before). Best effort: a
    server that refuses (no ``s3:ListBucketMultipartUploads`` or
    ``s3:AbortMultipartUpload`` permission) is a warning in the log, one that does not
    implement the list (s3rver, some gateways) a note; never a failure."""
    if p.store is None or p.circuit_open:
        return
    try:
        aborted = p.store.abort_stale_uploads(utcnow() - STALE_UPLOAD_AGE)
    except ArchiveError as e:
        log.warning("cannot abort stale multipart uploads: %s", e)
        return
    if aborted is None:  # nothing to warn about at every pass: the server has no such list
        log.info("the S3 server does not list multipart uploads; none are aborted")
        return
    if aborted:
        log.info("aborted %d multipart uploads left by a stopped pass", aborted)
        p.bump(stale_uploads_aborted=aborted)


def crash_message(e: BaseException, ctx: Context, what: str = "the cleanup pass failed") -> str:
    """One line: ``<what>: <ExceptionType>: <first line of the message>``, redacted."""
    try:
        lines = redact(str(e), ctx.settings).strip().splitlines()
    except Exception:
        lines = ["(details withheld)"]
    detail = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    text = f"{what}: {detail}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _record_pass_failure(ctx: Context, summary: PassSummary, error: str) -> None:
    """A failure of the whole pass: a failure row without run id (best effort: the
    database itself may be what went away) and the summary's failure list and count."""
    try:
        records.add_failure(ctx.db, None, error, summary.pass_id)
    except Exception:
        log.debug("cannot record the failure of pass %s", summary.pass_id, exc_info=True)
    summary.failures.append(Failure(None, None, None, error))
    summary.backup_failures += 1


def record_crashed_pass(ctx: Context, trigger: str, error: str) -> PassSummary:
    """A pass whose process died without reporting (killed, out of memory, a crash before
    its summary): record it as a finished pass with ``error`` and a failure without run
    id, and return the summary to notify about, like ``run_pass`` does for a crash."""
    at = utcnow().isoformat()
    summary = PassSummary(trigger=trigger, started_at=at, finished_at=at, error=error)
    summary.failures.append(Failure(None, None, None, error))
    summary.backup_failures = 1
    try:
        summary.pass_id = records.record_failed_pass(ctx.db, trigger, summary.to_dict(), error)
    except Exception:
        log.debug("cannot record the crashed %s pass", trigger, exc_info=True)
    readcache.invalidate()
    return summary


def _open_pass_row(ctx: Context, summary: PassSummary) -> None:
    pass_id, started = records.open_pass(ctx.db, summary.trigger)
    summary.pass_id, summary.started_at = pass_id, started.isoformat()
