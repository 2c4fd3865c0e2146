"""The archive ledger (``archived_runs``): one row per run with verified objects in S3.
This module is the one owner of ``ArchivedRun``: every read and write goes through it.

Guarantees: a row is written only after its objects were verified, and before any local
file of the run is deleted; writes are idempotent upserts (two processes writing the
same row — e.g. a pass that lost its lock and its successor — never fail on a duplicate
key); a row never loses the keys of objects it recorded earlier.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Select, exists, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Update

from fastflow.archive.store import StoredObject
from fastflow.db.engine import Database
from fastflow.db.models import TRUNCATION_REASON, ArchivedRun, PipelineRun, utcnow
from fastflow.runs import files as logfiles
from fastflow.runs.refs import RunRef

_WHICH = {logfiles.LOG_NAME: "log", logfiles.METRICS_NAME: "metrics"}


def get(db: Database, run_id: uuid.UUID) -> ArchivedRun | None:
    with db.session() as s:
        return s.get(ArchivedRun, run_id)


def pending(db: Database) -> list[ArchivedRun]:
    """Entries whose local deletion did not complete (a crash, a failure): the resume
    phase finishes them. Full logs archived before truncation are not pending: their
    run stays until retention removes it."""
    with db.session() as s:
        return list(
            s.scalars(
                select(ArchivedRun).where(
                    ArchivedRun.local_deleted_at.is_(None),
                    ArchivedRun.reason != TRUNCATION_REASON,
                )
            )
        )


def object_values(stored: dict[str, StoredObject], codec: str) -> dict[str, Any]:
    """Ledger columns describing verified objects (by local file name)."""
    values: dict[str, Any] = {}
    for name, obj in stored.items():
        which = _WHICH[name]
        values.update(
            {
                f"{which}_key": obj.key,
                f"{which}_size": obj.size,
                f"{which}_sha256": obj.sha256,
                f"{which}_original_size": obj.original_size,
                f"{which}_original_sha256": obj.original_sha256,
            }
        )
    if stored:
        values["encoding"] = codec if codec != "none" else None
    return values


def record(
    db: Database,
    run: RunRef,
    bucket: str,
    values: dict[str, Any],
    reason: str,
) -> None:
    """Upsert the run's entry with newly verified objects (``object_values``); the entry
    is pending local deletion again (``local_deleted_at`` cleared)."""
    row = {
        "pipeline_name": run.pipeline_name,
        "status": run.status,
        "triggered_by": run.triggered_by,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "exit_code": run.exit_code,
        "bucket": bucket,
        "reason": reason,
        "archived_at": utcnow(),
        "local_deleted_at": None,
        **values,
    }
    _upsert(db, run.id, row)


def mark_truncated(db: Database, run_id: uuid.UUID, at: datetime, size: int, sha: str) -> None:
    """The local log is now a truncated copy (``size``/``sha``) of the archived full log."""
    with db.session() as s:
        s.execute(
            update(ArchivedRun)
            .where(ArchivedRun.run_id == run_id)
            .values(log_truncated_at=at, local_log_size=size, local_log_sha256=sha)
        )


def _upsert(db: Database, run_id: uuid.UUID, values: dict[str, Any]) -> None:
    for attempt in range(3):
        try:
            with db.session() as s:
                result = s.execute(
                    update(ArchivedRun).where(ArchivedRun.run_id == run_id).values(**values)
                )
                if cast(CursorResult[Any], result).rowcount == 0:
                    s.add(ArchivedRun(run_id=run_id, **values))
            return
        except IntegrityError:
            if attempt == 2:
                raise  # pragma: no cover - a row that keeps appearing and vanishing


def mark_local_deleted_stmt(run_id: uuid.UUID, at: datetime) -> Update:
    """The statement that stamps ``local_deleted_at`` — for the caller's own transaction
    (the run row is deleted in the same commit)."""
    return (
        update(ArchivedRun)
        .where(ArchivedRun.run_id == run_id, ArchivedRun.local_deleted_at.is_(None))
        .values(local_deleted_at=at)
    )


def pending_ids() -> Select[Any]:
    """Subquery: run ids whose local files still wait for deletion."""
    return select(ArchivedRun.run_id).where(ArchivedRun.local_deleted_at.is_(None))


def entries(
    db: Database, pipeline: str | None = None, since: datetime | None = None, batch: int = 500
) -> Iterator[list[ArchivedRun]]:
    """Every entry (optionally of one pipeline, archived since a time), in batches by
    run id (keyset pages: bounded memory for any ledger size)."""
    cursor = None
    while True:
        q = select(ArchivedRun).order_by(ArchivedRun.run_id).limit(batch)
        if pipeline:
            q = q.where(ArchivedRun.pipeline_name == pipeline)
        if since:
            q = q.where(ArchivedRun.archived_at >= since)
        if cursor is not None:
            q = q.where(ArchivedRun.run_id > cursor)
        with db.session() as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield rows
        cursor = rows[-1].run_id


def get_many(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, ArchivedRun]:
    if not ids:
        return {}
    with db.session() as s:
        rows = s.scalars(select(ArchivedRun).where(ArchivedRun.run_id.in_(ids)))
        return {r.run_id: r for r in rows}


def page(db: Database, pipeline: str | None, limit: int, offset: int) -> list[ArchivedRun]:
    """Entries newest first."""
    q = select(ArchivedRun)
    if pipeline:
        q = q.where(ArchivedRun.pipeline_name == pipeline)
    q = q.order_by(ArchivedRun.archived_at.desc(), ArchivedRun.run_id).limit(limit).offset(offset)
    with db.session() as s:
        return list(s.scalars(q))


def ids_between(
    db: Database, low: uuid.UUID, high: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, str, datetime]]:
    """``(run_id, pipeline_name, started_at)`` of up to ``limit`` entries whose run id
    lies in ``[low, high]`` (a short id's range), by run id."""
    q = (
        select(ArchivedRun.run_id, ArchivedRun.pipeline_name, ArchivedRun.started_at)
        .where(ArchivedRun.run_id >= low, ArchivedRun.run_id <= high)
        .order_by(ArchivedRun.run_id)
        .limit(limit)
    )
    with db.session() as s:
        return [(rid, name, started) for rid, name, started in s.execute(q).all()]


def rows_deleted(pipeline: str | None, status: str | None) -> Select[uuid.UUID, datetime, bool]:
    """Query of ``(id, started_at, row_deleted=True)`` for the entries whose
    ``pipeline_runs`` row is gone (deleted by retention), optionally of one pipeline and
    status — to merge with the runs (``runs.store.page_with_archived``)."""
    q = select(
        ArchivedRun.run_id.label("id"),
        ArchivedRun.started_at.label("started_at"),
        literal(True).label("row_deleted"),
    ).where(~exists().where(PipelineRun.id == ArchivedRun.run_id))
    if pipeline:
        q = q.where(ArchivedRun.pipeline_name == pipeline)
    if status:
        q = q.where(ArchivedRun.status == status.upper())
    return q


def count_archived(db: Database, ids: list[uuid.UUID]) -> int:
    """How many of ``ids`` have an entry."""
    total = 0
    with db.session() as s:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            total += (
                s.scalar(
                    select(func.count())
                    .select_from(ArchivedRun)
                    .where(ArchivedRun.run_id.in_(chunk))
                )
                or 0
            )
    return total


def totals(db: Database) -> tuple[int, int]:
    """(entries, bytes stored) for ``/metrics``."""
    with db.session() as s:
        n, logs, metrics = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(ArchivedRun.log_size), 0),
                func.coalesce(func.sum(ArchivedRun.metrics_size), 0),
            )
        ).one()
    return int(n), int(logs or 0) + int(metrics or 0)


def last_archived_at(db: Database) -> datetime | None:
    with db.session() as s:
        return s.scalar(select(func.max(ArchivedRun.archived_at)))
