"""The cleanup pass's deletions in chunks: uploads in the worker threads, database work
batched per chunk in the pass's own thread.

Per chunk of ``CHUNK`` runs: one query for the pinned runs and one for their ledger
entries; the workers upload and verify each run's files (no database work); then one
transaction commits the ledger rows of every verified run, and one more — after the
pass-lock check — locks the chunk's rows, re-checks pins, deletes the files
(identity-checked) and the rows and stamps ``local_deleted_at``. While the pass thread
commits chunk *k*, the workers upload chunks *k + 1* and *k + 2*.

The guarantees of ``executor`` hold unchanged: a file is deleted only after its object
was verified and its ledger row committed (the ledger transaction precedes the delete
transaction); a run pinned at any time before the delete transaction keeps everything;
one run's failure (a changed file, a refused upload) is recorded for that run only and
never stops the others. A pass killed between the two transactions leaves committed
ledger entries pending local deletion, which the next pass's resume phase finishes.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update

from fastflow.archive import ledger
from fastflow.archive.store import StoredObject
from fastflow.db.models import ACTIVE_STATUSES, ArchivedRun, PipelineRun, utcnow
from fastflow.errors import ArchiveError, PassLockLost, UnsafePath
from fastflow.lifecycle import deletion as reaper
from fastflow.lifecycle import records
from fastflow.lifecycle.deletion import Expected, FileIdentity
from fastflow.lifecycle.executor import (
    WHICH,
    PassRun,
    lock_pinned,
    run_meta,
    upload_held,
    upload_order,
)
from fastflow.lifecycle.policy import Action, ActionKind
from fastflow.runs import pins

CHUNK = 64  # runs per ledger transaction and per delete transaction
AHEAD = 2  # chunks queued for the workers beyond the one the pass's thread commits


@dataclass
class Ready:
    """A run whose files are archived and verified (or need no archive): what the
    batched ledger and delete transactions need."""

    action: Action
    stored: dict[str, StoredObject]  # new objects (a ledger row to write); {} = none
    expect: Expected
    archived: bool  # the run has a ledger entry (new or earlier)
    payload: tuple[str, FileIdentity] | None


def _chunks(actions: list[Action]) -> Iterator[list[Action]]:
    for i in range(0, len(actions), CHUNK):
        yield [a for a in actions[i : i + CHUNK] if a.kind is not ActionKind.KEEP]


def run_actions(p: PassRun, pool: ThreadPoolExecutor, actions: list[Action]) -> None:
    """Archive and remove ``actions`` chunk by chunk. The workers always have the next
    chunks queued (``AHEAD``) while the pass's thread commits an earlier one, so no
    worker waits for a chunk's slowest upload or for the database."""
    pending: deque[list[Future[Ready | None]]] = deque()
    for chunk in _chunks(actions):
        if not chunk:
            continue
        ids = [a.run.id for a in chunk]
        pinned = pins.pinned_among(p.db, ids)
        entries = ledger.get_many(p.db, ids) if p.store is not None else {}
        pending.append([pool.submit(_prepare, p, a, a.run.id in pinned, entries) for a in chunk])
        if len(pending) > AHEAD:
            _finish(p, [f.result() for f in pending.popleft()])
    while pending:
        _finish(p, [f.result() for f in pending.popleft()])


def _prepare(
    p: PassRun, action: Action, pinned: bool, entries: dict[uuid.UUID, ArchivedRun]
) -> Ready | None:
    """In a worker: upload and verify the run's files (None: nothing more to do for it —
    pinned, skipped or failed, already counted)."""
    run = action.run
    if p.circuit_open:
        p.incomplete = True
        p.bump(skipped_runs=1)
        return None
    try:
        p.guard()
        if pinned:  # pinned after planning: nothing to do
            p.keep_pinned(run.id, archived=False)
            return None
        files = p.local_files(run.log_file, run.metrics_file)
        stored: dict[str, StoredObject] = {}
        expect: Expected = {}
        archived = False
        if files and (p.store is not None or p.summary.config_error is not None):
            if not p.can_archive(run):
                return None
            assert p.store is not None
            entry = entries.get(run.id)
            if entry is not None and not entry.full_log_archived:
                p.bump(skipped_runs=1)  # the resume phase owns it; never upload over it
                return None
            if entry is not None:
                expect = p.retire_truncated(run, files, entry, action)
            else:
                stored, expect = _upload(p, action, files)
            archived = True
        return Ready(action, stored, expect, archived, p.archive_payload(run))
    except PassLockLost:
        raise
    except Exception as e:
        p.fail_from(run, e)
        return None


def _upload(
    p: PassRun, action: Action, files: dict[str, Path]
) -> tuple[dict[str, StoredObject], Expected]:
    """Upload and verify ``files``; the identities they had while they were hashed."""
    assert p.store is not None
    run = action.run
    stored: dict[str, StoredObject] = {}
    expect: Expected = {}
    meta = run_meta(run)
    for name, path in upload_order(files):
        key = p.store.key_for(run.pipeline_name, str(run.id), name)
        stored[name], expect[WHICH[name]] = upload_held(p.logs_root, p.store, key, path, meta)
    return stored, expect


def _finish(p: PassRun, results: list[Ready | None]) -> None:
    """In the pass's thread: commit the chunk's ledger rows, then delete what they
    cover in one transaction."""
    ready = [r for r in results if r is not None]
    if not ready:
        return
    fresh = [r for r in ready if r.stored]
    if fresh:
        assert p.store is not None
        p.guard()
        ledger.record_many(
            p.db,
            [
                (
                    r.action.run,
                    p.store.bucket,
                    ledger.object_values(r.stored, p.store.codec),
                    r.action.kind.value,
                )
                for r in fresh
            ],
        )
        p.bump(
            archived_runs=len(fresh),
            bytes_archived=sum(o.size for r in fresh for o in r.stored.values()),
        )
        p.reset_connection_failures()
    p.guard()
    _remove(p, ready)


def _remove(p: PassRun, ready: list[Ready]) -> None:
    """Lock the rows, skip pinned runs, delete files (identity-checked) and rows, stamp
    the ledger — one transaction; per-run failures are recorded after it commits."""
    now = utcnow()
    failed: list[tuple[Ready, Exception]] = []
    done: list[tuple[Ready, reaper.Removed]] = []
    refused: list[Ready] = []
    gone = 0
    ids = [r.action.run.id for r in ready]
    # LOGS_DIR held and its marker confirmed after every run of the chunk was listed
    with p.held_logs_dir() as root_fd, p.db.session() as s:
        pinned = lock_pinned(s, ids)
        for r in ready:
            run = r.action.run
            if run.id in pinned:
                refused.append(r)
                continue
            try:
                removed = reaper.delete_files(
                    p.logs_root,
                    run.log_file,
                    run.metrics_file,
                    p.checked(r.expect),
                    root_fd=root_fd,
                )
            except (ArchiveError, UnsafePath, OSError) as e:  # FileChanged, I/O errors
                failed.append((r, e))
                continue
            done.append((r, removed))
        drop = [
            r.action.run.id for r, _ in done if r.action.kind == ActionKind.ARCHIVE_AND_DROP_FILES
        ]
        dele = [
            r.action.run.id for r, _ in done if r.action.kind != ActionKind.ARCHIVE_AND_DROP_FILES
        ]
        if drop:
            s.execute(
                update(PipelineRun)
                .where(PipelineRun.id.in_(drop))
                .values(log_file=None, metrics_file=None, log_size=None)
                .execution_options(synchronize_session=False)
            )
        if dele:
            result = s.execute(
                delete(PipelineRun)
                .where(PipelineRun.id.in_(dele), PipelineRun.status.not_in(ACTIVE_STATUSES))
                .execution_options(synchronize_session=False)
            )
            gone = cast(CursorResult[Any], result).rowcount
        archived = [r.action.run.id for r, _ in done if r.archived]
        if archived:
            s.execute(ledger.mark_local_deleted_stmt(archived, now))
    for r in refused:
        p.keep_pinned(r.action.run.id, archived=r.archived)
    for r, err in failed:
        p.fail_from(r.action.run, err)
    p.bump(
        dropped_files_runs=len(drop),
        deleted_runs=gone,
        deleted_logs=sum(int(m.log) for _, m in done),
        deleted_metrics=sum(int(m.metrics) for _, m in done),
    )
    if archived:
        records.resolve_failures(p.db, archived, now)
    for r, _ in done:
        p.remove_payload(r.payload)
