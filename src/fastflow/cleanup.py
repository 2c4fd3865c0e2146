"""One cleanup pass: lock -> resume -> plan -> archive -> record -> delete -> report.

Safety invariants (each proven by a test):
- a local file is deleted only after ``S3Store.put_verified`` confirmed an object with
  its exact size and SHA-256 and the ``archived_runs`` row is committed — unless S3
  backup is disabled, or the run has no file at all;
- S3 enabled but incompletely configured deletes nothing that needs an archive;
- PENDING and RUNNING runs are never touched (see ``retention``);
- a crash at any instant is completed by the next pass (``_resume`` first finishes every
  ledger entry whose local files were not yet deleted), without re-uploading over it;
- one pass at a time across processes (``PassLock``);
- memory is bounded: candidates come from SQL in batches, uploads stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from fastflow import archive, logfiles, pipelines, readcache, reaper, selection
from fastflow.app_context import Context
from fastflow.archive import ArchiveStore, StoredObject
from fastflow.config import Settings
from fastflow.errors import ArchiveError, ArchiveNotConfigured, FastflowError, UnsafePath
from fastflow.models import ArchivedRun, BackupFailure, CleanupPass, PipelineRun, utcnow
from fastflow.passlock import PassLock
from fastflow.retention import Action, ActionKind, Policy, RunRef, fallback, policy_for
from fastflow.truncate import truncate_log

MAX_FAILURE_ROWS = 1000
CIRCUIT_BREAK_AFTER = 3  # consecutive connection-level failures: the server is down
MAX_LISTED_FAILURES = 200
MAX_PLAN_LINES = 10_000


@dataclass
class Failure:
    run_id: str | None
    pipeline_name: str | None
    started_at: str | None
    error: str


@dataclass
class PassSummary:
    """What one pass did. Counts are independent of each other."""

    trigger: str
    dry_run: bool = False
    pass_id: int | None = None
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    planned_runs: int = 0
    planned_truncations: int = 0
    archived_runs: int = 0
    deleted_runs: int = 0
    deleted_logs: int = 0
    deleted_metrics: int = 0
    truncated_logs: int = 0
    dropped_files_runs: int = 0
    backup_failures: int = 0
    skipped_runs: int = 0
    bytes_archived: int = 0
    config_error: str | None = None
    failures: list[Failure] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[PassSummary], None]


def pipeline_policy(settings: Settings, pipeline: str) -> Policy:
    """The global retention settings with the pipeline's ``pipeline.json`` overrides."""
    try:
        overrides = pipelines.load(settings.pipelines_dir, pipeline).retention
    except FastflowError:
        overrides = None  # pipeline folder gone or invalid: the global policy applies
    return policy_for(settings, overrides)


def _meta(run: RunRef) -> dict[str, str]:
    def iso(v: datetime | None) -> str:
        return v.isoformat() if v else ""

    return {
        "pipeline_name": run.pipeline_name,
        "run_id": str(run.id),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "status": run.status,
        "triggered_by": run.triggered_by,
        "exit_code": "" if run.exit_code is None else str(run.exit_code),
    }


class PassRun:
    """State of one executing pass (counters are updated under a lock by workers)."""

    def __init__(
        self,
        ctx: Context,
        summary: PassSummary,
        now: datetime,
        store: ArchiveStore | None,
        progress: Progress | None,
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.db = ctx.db
        self.logs_root = ctx.settings.logs_root
        self.summary = summary
        self.now = now
        self.store = store
        self.progress = progress
        self._lock = threading.Lock()
        self._conn_failures = 0
        self.circuit_open = False
        self._policies: dict[str, Policy] = {}

    # --- bookkeeping -----------------------------------------------------------------

    def _bump(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self.summary, name, getattr(self.summary, name) + n)
            if self.progress is not None:
                self.progress(self.summary)

    def record_failure(self, run: RunRef | None, err: ArchiveError | str) -> None:
        message = str(err)
        with self.db.session() as s:
            s.add(
                BackupFailure(
                    run_id=run.id if run else None,
                    pipeline_name=run.pipeline_name if run else None,
                    started_at=run.started_at if run else None,
                    error_message=message,
                    pass_id=self.summary.pass_id,
                    created_at=utcnow(),
                )
            )
        with self._lock:
            if isinstance(err, ArchiveError) and err.connection_level:
                self._conn_failures += 1
                if self._conn_failures >= CIRCUIT_BREAK_AFTER:
                    self.circuit_open = True
            if len(self.summary.failures) < MAX_LISTED_FAILURES:
                self.summary.failures.append(
                    Failure(
                        run_id=str(run.id) if run else None,
                        pipeline_name=run.pipeline_name if run else None,
                        started_at=run.started_at.isoformat() if run else None,
                        error=message,
                    )
                )
        readcache.invalidate()
        self._bump(backup_failures=1)

    def policy(self, pipeline: str) -> Policy:
        if pipeline not in self._policies:
            self._policies[pipeline] = pipeline_policy(self.settings, pipeline)
        return self._policies[pipeline]

    # --- archive + delete ------------------------------------------------------------

    def _local_files(self, run: RunRef) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for name, rel in (
            (logfiles.LOG_NAME, run.log_file),
            (logfiles.METRICS_NAME, run.metrics_file),
        ):
            if rel is None:
                continue
            path = logfiles.resolve(self.logs_root, rel)
            if path.exists():
                files[name] = path
        return files

    def _upload(self, run: RunRef, files: dict[str, Path], action: Action) -> None:
        assert self.store is not None
        stored: dict[str, StoredObject] = {}
        meta = _meta(run)
        for name, path in files.items():
            key = self.store.key_for(run.pipeline_name, str(run.id), name)
            stored[name] = self.store.put_verified(key, path, meta)
        log, metrics = stored.get(logfiles.LOG_NAME), stored.get(logfiles.METRICS_NAME)
        with self.db.session() as s:
            s.merge(
                ArchivedRun(
                    run_id=run.id,
                    pipeline_name=run.pipeline_name,
                    status=run.status,
                    triggered_by=run.triggered_by,
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    exit_code=run.exit_code,
                    bucket=self.store.bucket,
                    log_key=log.key if log else None,
                    log_size=log.size if log else None,
                    log_sha256=log.sha256 if log else None,
                    metrics_key=metrics.key if metrics else None,
                    metrics_size=metrics.size if metrics else None,
                    metrics_sha256=metrics.sha256 if metrics else None,
                    encoding=self.store.codec if self.store.codec != "none" else None,
                    log_original_size=log.original_size if log else None,
                    log_original_sha256=log.original_sha256 if log else None,
                    metrics_original_size=metrics.original_size if metrics else None,
                    metrics_original_sha256=metrics.original_sha256 if metrics else None,
                    reason=action.kind.value,
                    archived_at=utcnow(),
                    local_deleted_at=None,
                )
            )
        self._bump(archived_runs=1, bytes_archived=sum(o.size for o in stored.values()))
        with self._lock:
            self._conn_failures = 0

    def _has_ledger_entry(self, run: RunRef) -> bool:
        with self.db.session() as s:
            return s.get(ArchivedRun, run.id) is not None

    def archive_then_remove(self, action: Action) -> None:
        """Archive (when enabled) and then delete the run or drop its files."""
        run = action.run
        if self.circuit_open:
            self._bump(skipped_runs=1)
            return
        drop_only = action.kind == ActionKind.ARCHIVE_AND_DROP_FILES
        try:
            files = self._local_files(run)
            archived = False
            if files:
                if self.summary.config_error is not None:
                    self._bump(skipped_runs=1)  # needs an archive that cannot be made
                    return
                if self._has_ledger_entry(run):
                    # resume() owns runs that were archived before; never upload over them
                    self._bump(skipped_runs=1)
                    return
                if self.store is not None:
                    self._upload(run, files, action)
                    archived = True
            removed = reaper.delete_files(self.logs_root, run.log_file, run.metrics_file)
            now = utcnow()
            if drop_only:
                reaper.drop_file_columns(self.db, run.id, now, archived=archived)
                self._bump(dropped_files_runs=1)
            elif reaper.delete_run_row(self.db, run.id, now, archived=archived):
                self._bump(deleted_runs=1)
            self._bump(deleted_logs=int(removed.log), deleted_metrics=int(removed.metrics))
            if archived:
                reaper.resolve_failures(self.db, run.id, now)
        except ArchiveError as e:
            self.record_failure(run, e)
        except UnsafePath as e:
            self.record_failure(run, ArchiveError(str(e)))
        except OSError as e:
            self.record_failure(run, ArchiveError(f"local file error: {e.strerror or e}"))

    # --- resume interrupted work -------------------------------------------------------

    def resume(self) -> None:
        """Finish ledger entries whose local deletion did not complete (a crash)."""
        if self.store is None:
            return
        with self.db.session() as s:
            pending = list(
                s.scalars(select(ArchivedRun).where(ArchivedRun.local_deleted_at.is_(None)))
            )
        for entry in pending:
            self._resume_one(entry)

    def _resume_one(self, entry: ArchivedRun) -> None:
        assert self.store is not None
        with self.db.session() as s:
            row = s.get(PipelineRun, entry.run_id)
        rid = str(entry.run_id)
        log_rel = row.log_file if row else logfiles.log_rel(entry.pipeline_name, rid)
        metrics_rel = row.metrics_file if row else logfiles.metrics_rel(entry.pipeline_name, rid)
        ref = RunRef(
            entry.run_id,
            entry.pipeline_name,
            entry.status,
            entry.triggered_by,
            entry.started_at,
            entry.finished_at,
            entry.exit_code,
            log_rel,
            metrics_rel,
            None,
        )
        try:
            for rel, which, key, size, digest in (
                (log_rel, "log", entry.log_key, entry.log_size, entry.log_sha256),
                (
                    metrics_rel,
                    "metrics",
                    entry.metrics_key,
                    entry.metrics_size,
                    entry.metrics_sha256,
                ),
            ):
                if rel is None:
                    continue
                path = logfiles.resolve(self.logs_root, rel)
                if not path.exists():
                    continue
                if key is None or size is None or digest is None:
                    raise ArchiveError(f"{path.name} exists locally but was not archived")
                local = archive.sha256_of(path)
                if local != entry.original(which):
                    raise ArchiveError(
                        f"{path.name} changed since it was archived; keeping it (archived "
                        f"copy s3://{entry.bucket}/{key} left untouched)"
                    )
                self.store.verify(key, size, digest)
            removed = reaper.delete_files(self.logs_root, log_rel, metrics_rel)
            now = utcnow()
            if row is None:
                with self.db.session() as s:
                    s.execute(
                        update(ArchivedRun)
                        .where(ArchivedRun.run_id == entry.run_id)
                        .values(local_deleted_at=now)
                    )
            elif entry.reason == ActionKind.ARCHIVE_AND_DROP_FILES.value:
                reaper.drop_file_columns(self.db, entry.run_id, now, archived=True)
                self._bump(dropped_files_runs=1)
            elif reaper.delete_run_row(self.db, entry.run_id, now, archived=True):
                self._bump(deleted_runs=1)
            self._bump(deleted_logs=int(removed.log), deleted_metrics=int(removed.metrics))
            reaper.resolve_failures(self.db, entry.run_id, now)
        except ArchiveError as e:
            self.record_failure(ref, e)

    # --- truncation ---------------------------------------------------------------------

    def truncate(self, action: Action, limit: int) -> None:
        run = action.run
        assert run.log_file is not None
        try:
            path = logfiles.resolve(self.logs_root, run.log_file)
            result = truncate_log(path, limit, self.now)
        except FileNotFoundError:
            return  # nothing left to truncate
        except (OSError, UnsafePath) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.archive_then_remove(fallback(action, reason))
            return
        if result is not None:
            with self.db.session() as s:
                s.execute(
                    update(PipelineRun)
                    .where(PipelineRun.id == run.id)
                    .values(log_size=result.new_size)
                )
            self._bump(truncated_logs=1)


def _open_store(ctx: Context) -> tuple[ArchiveStore | None, str | None]:
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
    """Start time of the pass that is running now, if any (for a 409 answer)."""
    with ctx.db.session() as s:
        return s.scalar(
            select(CleanupPass.started_at)
            .where(CleanupPass.finished_at.is_(None))
            .order_by(CleanupPass.started_at.desc())
            .limit(1)
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
    """Run one cleanup pass; raise ``PassAlreadyRunning`` if another one holds the lock."""
    started = time.monotonic()
    now = now or utcnow()
    summary = PassSummary(trigger=trigger, dry_run=dry_run, started_at=utcnow().isoformat())
    store, config_error = _open_store(ctx)
    summary.config_error = config_error
    if dry_run:
        _plan_only(ctx, summary, now, plan_sink)
        summary.duration_s = round(time.monotonic() - started, 3)
        return summary
    with PassLock(ctx.db):
        _open_pass_row(ctx, summary)
        p = PassRun(ctx, summary, now, store, progress)
        error: str | None = None
        try:
            if config_error is not None:
                p.record_failure(None, config_error)
            p.resume()
            _execute(ctx, p)
            if store is not None:
                _resolve_config_failures(ctx)
        except Exception as e:
            error = f"{type(e).__name__}: {archive.scrub(str(e), ctx.settings)}"
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
                p._bump(planned_runs=len(batch))
                list(pool.map(p.archive_then_remove, batch))
    for name in selection.pipeline_names(ctx.db):
        policy = p.policy(name)
        if policy.max_log_bytes is None:
            continue
        for batch in selection.truncation_candidates(ctx.db, name, policy, p.now, p.logs_root):
            p._bump(planned_truncations=len(batch))
            for action in batch:
                p.truncate(action, policy.max_log_bytes)


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


def _resolve_config_failures(ctx: Context) -> None:
    with ctx.db.session() as s:
        s.execute(
            update(BackupFailure)
            .where(BackupFailure.run_id.is_(None), BackupFailure.resolved_at.is_(None))
            .values(resolved_at=utcnow())
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
