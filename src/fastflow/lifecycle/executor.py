"""The executor of one cleanup pass: archive → verify → ledger → delete, and archive →
truncate, one run at a time (several runs in parallel threads).

Safety invariants (each proven by a test):
- a local file is deleted only after the server confirmed an object with its exact size
  and SHA-256, the ledger row is committed, and — immediately before unlinking — the file
  still has the identity (device, inode, size, mtime, ctime) it had when it was hashed; a file
  that changed is kept (``FileChanged``) and archived again by the next pass;
- with S3 enabled, a log is truncated only after its full copy is archived and verified;
  the truncated copy is never uploaded over the full log;
- every destructive step first checks that the pass still holds its lock
  (``PassLockLost`` stops the pass; failures seen after the loss are not recorded);
- a server that does not answer a bucket HEAD within seconds is treated as down for the
  whole pass, and the first timeout stops new uploads (the circuit opens);
- a pinned run is never deleted (issue 16): the pin is checked before archiving and again
  under the row's lock (PostgreSQL: the row; SQLite: the write lock) in the transaction
  that deletes its files and row, so a run pinned after planning keeps everything;
  objects archived for a run found pinned get the legal hold when it is configured.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from fastflow.archive import ledger
from fastflow.archive.store import HASH_CHUNK, ArchiveStore, StoredObject, sha256_of
from fastflow.config import Settings
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import ACTIVE_STATUSES, ArchivedRun, PipelineRun, utcnow
from fastflow.errors import (
    ArchiveError,
    FastflowError,
    FileChanged,
    InvalidPipelineConfig,
    LogsDirUnavailable,
    PassLockLost,
    UnsafePath,
)
from fastflow.lifecycle import deletion as reaper
from fastflow.lifecycle import records
from fastflow.lifecycle.deletion import Expected, FileIdentity
from fastflow.lifecycle.lock import PassLock
from fastflow.lifecycle.policy import Action, ActionKind, Policy, RunRef, policy_for
from fastflow.lifecycle.summary import Failure, PassSummary, Progress
from fastflow.runs import files as logfiles
from fastflow.runs import logsdir, pins, pipelines
from fastflow.security import without_paths

PAYLOAD = "payload.json"  # a webhook's request body, written next to the run's log
CIRCUIT_BREAK_AFTER = 3  # consecutive connection-level failures: the server is down
MAX_LISTED_FAILURES = 200
WHICH = {logfiles.LOG_NAME: "log", logfiles.METRICS_NAME: "metrics"}


def identify(logs_root: Path, path: Path) -> tuple[FileIdentity, int, str]:
    """Identity, size and SHA-256 of a file that is not being written (read through its
    held run folder: ``runs.files.held``); ``FileChanged`` when it changes while it is
    read."""
    with logfiles.held(logs_root, logfiles.rel_below(logs_root, path)) as f:
        before = f.identity()
        size, digest = sha256_of(f.path)
        if f.named() != before or size != before.size:
            raise FileChanged(f"{path.name} is being written to; kept for the next pass")
    return before, size, digest


def upload_order(files: dict[str, Path]) -> list[tuple[str, Path]]:
    """A run's files in the order they are uploaded: the metrics file first. A small
    upload, verified before the log's, shows the store what the server's ETags are
    before a large log is sent (``S3Store._upload``), and a refusal shows up before a
    long upload."""
    return sorted(files.items(), key=lambda f: f[0] != logfiles.METRICS_NAME)


def upload_held(
    logs_root: Path,
    store: ArchiveStore,
    key: str,
    path: Path,
    meta: dict[str, str],
    required: FileIdentity | None = None,
) -> tuple[StoredObject, FileIdentity]:
    """Upload and verify the file at ``path`` (a path ``resolve`` returned), read through
    its held run folder: the bytes archived are those of the file whose identity is
    returned — a folder swapped for a link meanwhile cannot make another file's bytes
    stand for it. ``FileChanged`` when the file's name no longer stands for that same,
    unchanged file after the upload, or when the file opened is not the ``required``
    one (the version a caller checked before deciding to upload it)."""
    with logfiles.held(logs_root, logfiles.rel_below(logs_root, path)) as f:
        before = f.identity()
        if required is not None and before != required:
            raise FileChanged(f"{path.name} changed after it was checked; kept")
        obj = store.put_verified(key, f.path, meta, name=path.name)
        after = f.named()
    if after != before or after is None or after.size != obj.original_size:
        raise FileChanged(f"{path.name} changed while it was archived; kept")
    return obj, after


def grew_from(
    logs_root: Path, path: Path, size: int | None, sha: str | None, ident: FileIdentity
) -> bool:
    """True when the file is still the version ``ident`` describes and its first ``size``
    bytes are exactly the archived ones (the file only grew: archiving it again loses
    nothing that the archive held). Read through the held run folder, so what is
    checked is the file that a later ``upload_held(required=ident)`` uploads."""
    if size is None or sha is None or ident.size <= size:
        return False
    with logfiles.held(logs_root, logfiles.rel_below(logs_root, path)) as f:
        if f.identity() != ident:
            return False
        h = hashlib.sha256()
        at = 0
        while at < size and (chunk := os.pread(f.fd, min(HASH_CHUNK, size - at), at)):
            h.update(chunk)
            at += len(chunk)
    return at == size and h.hexdigest() == sha


def pipeline_policy(settings: Settings, pipeline: str) -> Policy:
    """The global retention settings with the pipeline's ``pipeline.json`` overrides (what
    views show; the pass itself uses ``pass_policy``)."""
    try:
        overrides = pipelines.load(settings.pipelines_dir, pipeline).retention
    except FastflowError:
        overrides = None  # pipeline folder gone or invalid: the global policy applies
    return policy_for(settings, overrides)


def pass_policy(settings: Settings, pipeline: str) -> tuple[Policy | None, str | None]:
    """``(policy, None)`` for the pass: the global settings with the pipeline's overrides,
    or the global settings alone when it has no folder (gone, or a name no folder can
    have: its runs still age out); or
    ``(None, problem)`` when its ``pipeline.json`` is invalid — a typo in an override
    must not quietly apply the stricter global limit: its runs are kept, loudly."""
    try:
        overrides = pipelines.load(settings.pipelines_dir, pipeline).retention
    except InvalidPipelineConfig as e:
        problem = without_paths(str(e), settings)
        return None, (
            f"pipeline {pipeline!r}: {problem}; its runs are kept (not archived, deleted or "
            "truncated) until its pipeline.json is valid"
        )
    except FastflowError:  # no such folder (any more), or a name no folder can have
        overrides = None
    return policy_for(settings, overrides), None


def run_meta(run: RunRef) -> dict[str, str]:
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


def lock_pinned(s: Session, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Lock the runs' rows for the rest of the transaction (a no-op write: row locks on
    PostgreSQL, the write lock on SQLite — a concurrent pin waits for the commit) and
    return those that are pinned."""
    s.execute(
        update(PipelineRun)
        .where(PipelineRun.id.in_(run_ids))
        .values(pinned_at=PipelineRun.pinned_at)
        .execution_options(synchronize_session=False)
    )
    return set(
        s.scalars(
            select(PipelineRun.id).where(
                PipelineRun.id.in_(run_ids), PipelineRun.pinned_at.is_not(None)
            )
        )
    )


class PassRun:
    """State of one executing pass (counters are updated under a lock by workers)."""

    def __init__(
        self,
        ctx: Context,
        summary: PassSummary,
        now: datetime,
        store: ArchiveStore | None,
        progress: Progress | None,
        lock: PassLock | None = None,
        policies: dict[str, Policy | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.db = ctx.db
        self.logs_root = ctx.settings.logs_root
        self.summary = summary
        self.now = now
        self.store = store
        if store is not None:  # the pass's first upload is HEAD-verified again
            store.begin_pass()
        self.progress = progress
        self.lock = lock
        self.policies = policies if policies is not None else {}
        self.journal = ctx.settings.data_dir.expanduser().resolve() / "truncate.journal"
        self._mutex = threading.Lock()
        self._conn_failures = 0
        self.circuit_open = False
        self.incomplete = False  # some due run was not tried (circuit open, no archive)
        self._reachable: bool | None = None
        self._probe_mutex = threading.Lock()
        self._pinned: set[str] = set()  # runs found pinned at execution time: kept whole

    # --- bookkeeping -----------------------------------------------------------------

    def bump(self, **counts: int) -> None:
        with self._mutex:
            for name, n in counts.items():
                setattr(self.summary, name, getattr(self.summary, name) + n)
            if self.progress is not None:
                self.progress(self.summary)

    def guard(self) -> None:
        """Raise ``PassLockLost`` unless the pass still holds its lock."""
        if self.lock is not None:
            self.lock.check()

    def logs_dir_held(self) -> None:
        """Raise ``LogsDirUnavailable`` when ``LOGS_DIR`` stopped being this installation's
        since the pass began (a volume unmounted mid-pass), checked by path: at the end of
        a pass (truncations skip a log gone with the volume), and by ``held_logs_dir``
        when ``LOGS_DIR`` cannot be opened."""
        away = logsdir.problem(self.db, self.logs_root, mark=False)
        if away is not None:
            raise LogsDirUnavailable(away)

    @contextmanager
    def held_logs_dir(self) -> Iterator[int | None]:
        """``LOGS_DIR`` held open for a batch of deletions, its marker confirmed through
        that descriptor (``LogsDirUnavailable`` otherwise): a volume unmounted after this
        check cannot make the files it held look gone — they are found, and deleted,
        where they are. None when ``LOGS_DIR`` is missing and that is no problem (a new
        installation: nothing to delete)."""
        try:
            fd = os.open(self.logs_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.logs_dir_held()  # raises unless nothing is expected there
            yield None
            return
        try:
            away = logsdir.confirmed_at(self.db, fd, self.logs_root, "during the pass")
            if away is not None:
                raise LogsDirUnavailable(away)
            yield fd
        finally:
            os.close(fd)

    def lock_lost(self) -> bool:
        try:
            self.guard()
        except PassLockLost:
            return True
        return False

    def record_failure(self, run: RunRef | None, err: ArchiveError | str) -> None:
        """Record a failure — unless the pass lost its lock: then what went wrong may be
        the other pass's doing, and the pass stops instead."""
        if self.lock_lost():
            self.guard()
        message = str(err)
        records.add_failure(self.db, run, message, self.summary.pass_id)
        with self._mutex:
            if isinstance(err, ArchiveError) and err.connection_level:
                self._conn_failures += 1
                if err.timed_out or self._conn_failures >= CIRCUIT_BREAK_AFTER:
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
        self.bump(backup_failures=1)

    def reset_connection_failures(self) -> None:
        """An upload went through: the server is up (the circuit counts from zero)."""
        with self._mutex:
            self._conn_failures = 0

    def fail_from(self, run: RunRef, e: Exception) -> None:
        """Record an exception of one run's work as that run's failure."""
        if isinstance(e, ArchiveError):
            self.record_failure(run, e)
        elif isinstance(e, UnsafePath):
            self.record_failure(run, ArchiveError(str(e)))
        elif isinstance(e, OSError):
            where = self._file_of(run, e)
            on = f" on {where}" if where else ""
            self.record_failure(run, ArchiveError(f"local file error{on}: {e.strerror or e}"))
        else:
            raise e

    def _file_of(self, run: RunRef, e: OSError) -> str | None:
        """The file an OS error was about, as a path below ``LOGS_DIR`` (an error of a
        call through a folder's descriptor names only the file: it is in the run's
        folder); None when it names none."""
        if e.filename is None:
            return None
        name = os.fsdecode(e.filename)
        if os.path.isabs(name):
            for base in (str(self.logs_root), os.path.realpath(self.logs_root)):
                root = base.rstrip("/") + "/"
                if name.startswith(root):
                    return name[len(root) :]
            return os.path.basename(name)
        folder = os.path.dirname(run.log_file or run.metrics_file or "")
        return f"{folder}/{name}" if folder and "/" not in name else name

    def reachable(self, run: RunRef) -> bool:
        """Ask the server once per pass (short timeouts, no retry). A server that does
        not answer at all opens the circuit: the failure is recorded for ``run`` and the
        pass gives up in seconds instead of waiting out every upload's read timeout.
        Any answer, even an error (a key without ListBucket gets 403), lets the uploads
        go ahead and report for themselves."""
        with self._probe_mutex:
            if self._reachable is None:
                assert self.store is not None
                try:
                    self.store.ping()
                    self._reachable = True
                except ArchiveError as e:
                    self._reachable = not e.timed_out
                    if not self._reachable:
                        self.record_failure(
                            run,
                            ArchiveError(
                                f"{e}: the S3 server did not answer a HEAD of the bucket; "
                                "nothing is uploaded or deleted in this pass",
                                timed_out=True,
                            ),
                        )
                        return False
            elif not self._reachable:
                self.bump(skipped_runs=1)
        return self._reachable

    def can_archive(self, run: RunRef) -> bool:
        """False (and the run counted as skipped, or failed) when no archive can be made."""
        if self.summary.config_error is not None or self.circuit_open:
            self.incomplete = True
            self.bump(skipped_runs=1)
            return False
        if not self.reachable(run):
            self.incomplete = True
            return False
        return True

    def policy(self, pipeline: str) -> Policy | None:
        """The pipeline's policy for this pass; None (recorded as a failure, once) when
        its ``pipeline.json`` is invalid: then none of its runs is touched."""
        if pipeline not in self.policies:
            policy, problem = pass_policy(self.settings, pipeline)
            self.policies[pipeline] = policy
            if problem is not None:
                self.record_failure(None, problem)
                self.incomplete = True
        return self.policies[pipeline]

    # --- archiving -------------------------------------------------------------------

    def local_files(self, log_file: str | None, metrics_file: str | None) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for name, rel in ((logfiles.LOG_NAME, log_file), (logfiles.METRICS_NAME, metrics_file)):
            if rel is None:
                continue
            path = logfiles.resolve(self.logs_root, rel)
            if path.exists():
                files[name] = path
        return files

    def archive_files(
        self,
        run: RunRef,
        files: dict[str, Path],
        reason: str,
        counter: str = "archived_runs",
        store: ArchiveStore | None = None,
        required: dict[str, FileIdentity] | None = None,
    ) -> Expected:
        """Upload and verify ``files``, commit the ledger row; return the identities the
        files had while they were hashed (the delete step checks them again).
        ``required``: by file name, the version that must be the one uploaded."""
        store = store or self.store
        assert store is not None
        stored, expect = {}, {}
        meta = run_meta(run)
        for name, path in upload_order(files):
            key = store.key_for(run.pipeline_name, str(run.id), name)
            stored[name], expect[WHICH[name]] = upload_held(
                self.logs_root, store, key, path, meta, (required or {}).get(name)
            )
        self.guard()
        ledger.record(self.db, run, store.bucket, ledger.object_values(stored, store.codec), reason)
        self.bump(**{counter: 1}, bytes_archived=sum(o.size for o in stored.values()))
        self.reset_connection_failures()
        return expect

    def archive_then_remove(self, action: Action) -> None:
        """Archive (when enabled) and then delete the run or drop its files."""
        run = action.run
        if action.kind is ActionKind.KEEP:
            return  # a plan entry, never an action
        if self.circuit_open:
            self.incomplete = True
            self.bump(skipped_runs=1)
            return
        try:
            self.guard()
            if pins.pinned(self.db, run.id):  # pinned after planning: nothing to do
                self.keep_pinned(run.id, archived=False)
                return
            files = self.local_files(run.log_file, run.metrics_file)
            expect: Expected = {}
            archived = False
            if files and (self.store is not None or self.summary.config_error is not None):
                if not self.can_archive(run):
                    return
                assert self.store is not None
                entry = ledger.get(self.db, run.id)
                if entry is not None and not entry.full_log_archived:
                    self.bump(skipped_runs=1)  # the resume phase owns it; never upload over it
                    return
                if entry is not None:
                    expect = self.retire_truncated(run, files, entry, action)
                else:
                    expect = self.archive_files(run, files, action.kind.value)
                archived = True
            payload = self.archive_payload(run)
            self.guard()
            if self.remove(run.id, run.log_file, run.metrics_file, expect, action.kind, archived):
                self.remove_payload(payload)
        except (PassLockLost, LogsDirUnavailable):  # the pass stops
            raise
        except Exception as e:
            self.fail_from(run, e)

    def archive_payload(self, run: RunRef) -> tuple[str, FileIdentity] | None:
        """A webhook run's ``payload.json`` next to its log: archived and verified (S3
        enabled) like the log, so that deleting the run folder loses nothing. Returns
        its stored path and the identity that was verified."""
        rel = f"{logfiles.run_dir_rel(run.pipeline_name, str(run.id))}/{PAYLOAD}"
        path = logfiles.resolve(self.logs_root, rel)
        if not path.is_file():
            return None
        if self.store is None:
            return rel, FileIdentity.of(path)
        key = self.store.key_for(run.pipeline_name, str(run.id), PAYLOAD)
        return rel, upload_held(self.logs_root, self.store, key, path, run_meta(run))[1]

    def remove_payload(self, payload: tuple[str, FileIdentity] | None) -> None:
        if payload is None:
            return
        rel, ident = payload
        if rel.split("/")[-2] in self._pinned:
            return  # the run is pinned: its folder stays whole
        self.guard()
        reaper.delete_verified(self.logs_root, rel, ident)

    def checked(self, expect: Expected) -> Expected | None:
        """What ``delete_files`` checks: with S3 on, the verified identities (a file
        that is not among them is not deleted); with S3 off, nothing."""
        return expect if self.store is not None else None

    def remove(
        self,
        run_id: uuid.UUID,
        log_file: str | None,
        metrics_file: str | None,
        expect: Expected,
        kind: ActionKind | str,
        archived: bool,
    ) -> bool:
        """Delete the files (identity-checked) and the row, or drop the file columns — in
        one transaction that first locks the row and checks that the run is not pinned.
        False (nothing deleted, the run counted as kept) when it is pinned."""
        now = utcnow()
        dropped = gone = False
        removed = reaper.Removed()
        with self.held_logs_dir() as root_fd, self.db.session() as s:
            if lock_pinned(s, [run_id]):
                refused = True
            else:
                refused = False
                removed = reaper.delete_files(
                    self.logs_root, log_file, metrics_file, self.checked(expect), root_fd=root_fd
                )
                if kind == ActionKind.ARCHIVE_AND_DROP_FILES:
                    s.execute(
                        update(PipelineRun)
                        .where(PipelineRun.id == run_id)
                        .values(log_file=None, metrics_file=None, log_size=None)
                    )
                    dropped = True
                else:
                    result = s.execute(
                        delete(PipelineRun).where(
                            PipelineRun.id == run_id, PipelineRun.status.not_in(ACTIVE_STATUSES)
                        )
                    )
                    gone = bool(cast(CursorResult[Any], result).rowcount)
                if archived:
                    s.execute(ledger.mark_local_deleted_stmt(run_id, now))
        if refused:
            self.keep_pinned(run_id, archived=archived)
            return False
        if dropped:
            self.bump(dropped_files_runs=1)
        if gone:
            self.bump(deleted_runs=1)
        self.bump(deleted_logs=int(removed.log), deleted_metrics=int(removed.metrics))
        if archived:
            records.resolve_failures(self.db, run_id, now)
        return True

    def keep_pinned(self, run_id: uuid.UUID, *, archived: bool) -> None:
        """A run found pinned at execution time: counted as kept; what this pass archived
        of it gets the legal hold (when configured)."""
        with self._mutex:
            self._pinned.add(str(run_id))
        self.bump(kept_runs=1)
        if archived:
            hold = pins.set_holds(self.db, self.settings, run_id, on=True)
            if hold.error is not None:
                self.record_failure(
                    None, f"run {run_id} is pinned; its legal hold failed: {hold.error}"
                )

    def store_for(self, entry: ArchivedRun) -> ArchiveStore:
        """The store, writing with the encoding of the entry's earlier objects (one
        encoding per ledger row, even if ``S3_COMPRESSION`` changed since)."""
        assert self.store is not None
        codec = entry.encoding or "none"
        if codec == self.store.codec:
            return self.store
        clone = copy.copy(self.store)
        clone.codec = codec  # type: ignore[misc]
        return clone

    def retire_truncated(
        self, run: RunRef, files: dict[str, Path], entry: ArchivedRun, action: Action
    ) -> Expected:
        """Retention reached a run whose full log was archived before truncation: the
        full log stays as it is (the local copy is never uploaded over it) — unless the
        local log is that full log with lines added after it (a truncation that did not
        happen: an append in its last instant, or a crash), which is archived again;
        the metrics file is archived now."""
        assert self.store is not None and entry.log_key is not None
        expect: Expected = {}
        required: dict[str, FileIdentity] = {}
        log = files.pop(logfiles.LOG_NAME, None)
        if log is not None:
            ident, size, sha = identify(self.logs_root, log)
            if (size, sha) in (entry.local_identity("log"), entry.original("log")):
                assert entry.log_size is not None and entry.log_sha256 is not None
                self.store.verify(entry.log_key, entry.log_size, entry.log_sha256)
                expect["log"] = ident
            elif grew_from(self.logs_root, log, *entry.original("log"), ident):
                files[logfiles.LOG_NAME] = log  # a superset of the archived full log
                required[logfiles.LOG_NAME] = ident
            else:
                raise FileChanged(
                    f"{log.name} changed after its full copy was archived at "
                    f"s3://{entry.bucket}/{entry.log_key}; kept"
                )
        if files:
            expect.update(
                self.archive_files(
                    run,
                    files,
                    action.kind.value,
                    "archived_runs",
                    self.store_for(entry),
                    required,
                )
            )
        else:
            self.guard()
            ledger.record(self.db, run, entry.bucket, {}, action.kind.value)
        return expect
