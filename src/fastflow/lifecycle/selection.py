"""Find cleanup candidates in SQL, in batches, with bounded memory.

Per pipeline: one index-backed query for the count boundary (the oldest of the newest
``keep_runs`` finished runs, ``ORDER BY started_at DESC OFFSET keep-1``) and keyset
pages over ``(pipeline_name, started_at, id)`` for the runs older than the boundary or
the age cut-off. Active runs (PENDING, RUNNING) are excluded in every query. The pure
``retention.decide`` then turns each candidate into an action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, tuple_

from fastflow.db.engine import Database
from fastflow.db.models import ACTIVE_STATUSES, PipelineRun
from fastflow.errors import UnsafePath
from fastflow.lifecycle.policy import Action, Boundary, Policy, RunRef, age_cutoff, decide
from fastflow.runs import files as logfiles

BATCH_SIZE = 1000

_COLUMNS = (
    PipelineRun.id,
    PipelineRun.pipeline_name,
    PipelineRun.status,
    PipelineRun.triggered_by,
    PipelineRun.started_at,
    PipelineRun.finished_at,
    PipelineRun.exit_code,
    PipelineRun.log_file,
    PipelineRun.metrics_file,
    PipelineRun.log_size,
)


def _key_tuple(key: Boundary) -> Any:
    """A (started_at, id) literal typed like the columns, so that timestamps bind as naive
    UTC whatever the database session's time zone."""
    return tuple_(*key, types=[PipelineRun.started_at.type, PipelineRun.id.type])


def pipeline_names(db: Database) -> list[str]:
    """Every pipeline that has runs (an index scan)."""
    with db.session() as s:
        return list(s.scalars(select(PipelineRun.pipeline_name).distinct()))


def _finished(pipeline: str) -> list[object]:
    return [PipelineRun.pipeline_name == pipeline, PipelineRun.status.not_in(ACTIVE_STATUSES)]


def count_boundary(db: Database, pipeline: str, keep: int | None) -> Boundary | None:
    """(started_at, id) of the oldest run that the count rule keeps, or None."""
    if keep is None:
        return None
    q = (
        select(PipelineRun.started_at, PipelineRun.id)
        .where(*_finished(pipeline))  # type: ignore[arg-type]
        .order_by(PipelineRun.started_at.desc(), PipelineRun.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    with db.session() as s:
        row = s.execute(q).first()
    return (row[0], row[1]) if row else None


def _pages(db: Database, base: Any, batch: int) -> Iterator[list[RunRef]]:
    cursor: Boundary | None = None
    while True:
        q = base
        if cursor is not None:
            q = q.where(tuple_(PipelineRun.started_at, PipelineRun.id) > _key_tuple(cursor))
        q = q.order_by(PipelineRun.started_at, PipelineRun.id).limit(batch)
        with db.engine.connect() as conn:  # Core rows: a fraction of the ORM's overhead
            rows = [RunRef(*r) for r in conn.execute(q)]
        if not rows:
            return
        yield rows
        cursor = rows[-1].key
        if len(rows) < batch:
            return


def deletion_candidates(
    db: Database, pipeline: str, policy: Policy, now: datetime, batch: int = BATCH_SIZE
) -> Iterator[list[Action]]:
    """Batches of ``archive_and_delete_run`` actions for one pipeline, oldest first."""
    boundary = count_boundary(db, pipeline, policy.keep_runs)
    cutoff = age_cutoff(policy, now)
    conds = []
    if boundary is not None:
        conds.append(tuple_(PipelineRun.started_at, PipelineRun.id) < _key_tuple(boundary))
    if cutoff is not None:
        conds.append(PipelineRun.started_at < cutoff)
    if not conds:
        return
    base = select(*_COLUMNS).where(*_finished(pipeline), or_(*conds))  # type: ignore[arg-type]
    for page in _pages(db, base, batch):
        actions = [a for r in page if (a := decide(policy, now, r, boundary)) is not None]
        if actions:
            yield actions


def truncation_candidates(
    db: Database,
    pipeline: str,
    policy: Policy,
    now: datetime,
    logs_root: Path,
    batch: int = BATCH_SIZE,
    size_of: Callable[[Path], int | None] = logfiles.size_of,
) -> Iterator[list[Action]]:
    """Batches of ``truncate_log`` actions: finished runs kept by retention whose log is
    larger than the limit. Runs without a recorded size are measured on disk."""
    if policy.max_log_bytes is None:
        return
    boundary = count_boundary(db, pipeline, policy.keep_runs)
    cutoff = age_cutoff(policy, now)
    conds: list[object] = [
        PipelineRun.log_file.is_not(None),
        or_(PipelineRun.log_size > policy.max_log_bytes, PipelineRun.log_size.is_(None)),
    ]
    if boundary is not None:
        conds.append(tuple_(PipelineRun.started_at, PipelineRun.id) >= _key_tuple(boundary))
    if cutoff is not None:
        conds.append(PipelineRun.started_at >= cutoff)
    base = select(*_COLUMNS).where(*_finished(pipeline), and_(*conds))  # type: ignore[arg-type]
    for page in _pages(db, base, batch):
        actions = []
        for ref in page:
            if ref.log_size is None and ref.log_file:
                try:
                    size = size_of(logfiles.resolve(logs_root, ref.log_file))
                except UnsafePath:
                    size = None
                ref = RunRef(**{**ref.__dict__, "log_size": size})
            action = decide(policy, now, ref, boundary)
            if action is not None:
                actions.append(action)
        if actions:
            yield actions
