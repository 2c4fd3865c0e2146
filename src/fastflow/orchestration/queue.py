"""The run queue in the database: enqueue, claim, cancel, and what follows a run's end.

Guarantees:
- a QUEUED run is claimed by exactly one server: claims take a transaction-scoped lock
  (``runs.lock_claims``: a PostgreSQL advisory lock; SQLite's write lock) and move the
  row to PENDING with the claiming host and process — only while it is still QUEUED,
  so a run cancelled at that instant stays CANCELLED and never starts;
- ``max_instances`` of a pipeline holds across every server sharing the database:
  the count of its PENDING/RUNNING runs is read inside the same locked transaction;
- queued runs start oldest first, and not before their ``not_before`` (retry delays);
- cancelling a QUEUED run ends it at once; a RUNNING run is flagged
  (``cancel_requested_at``) and the server executing it stops it within ~1 s.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from fastflow.db import cache as readcache
from fastflow.db.engine import Database, begin_write, is_postgres
from fastflow.db.models import (
    CANCELLED_BEFORE_START,
    FINAL_STATUSES,
    PipelineRun,
    RunStatus,
    utcnow,
)
from fastflow.errors import RunNotFound
from fastflow.runs import files as logfiles
from fastflow.runs import store as runs

RUNNING_STATES = runs.RUNNING_STATES


def enqueue(
    db: Database,
    pipeline_name: str,
    triggered_by: str,
    *,
    env: dict[str, str] | None = None,
    attempt: int = 1,
    retry_of: uuid.UUID | None = None,
    upstream_run_id: uuid.UUID | None = None,
    not_before: datetime | None = None,
    scheduled_for: datetime | None = None,
    schedule_key: str | None = None,
    run_config_id: str | None = None,
    session: Any = None,
) -> uuid.UUID:
    """Insert a QUEUED run (in ``session`` when given, so that a schedule tick and its
    run commit together)."""
    run_id = uuid.uuid4()
    now = utcnow()
    row = PipelineRun(
        id=run_id,
        pipeline_name=pipeline_name,
        status=RunStatus.QUEUED.value,
        triggered_by=triggered_by,
        started_at=now,
        queued_at=now,
        not_before=not_before,
        log_file=logfiles.log_rel(pipeline_name, str(run_id)),
        metrics_file=logfiles.metrics_rel(pipeline_name, str(run_id)),
        attempt=attempt,
        retry_of=retry_of,
        upstream_run_id=upstream_run_id,
        scheduled_for=scheduled_for,
        schedule_key=schedule_key,
        run_config_id=run_config_id,
        env_overrides=json.dumps(env) if env else None,
    )
    if session is not None:
        session.add(row)
    else:
        with db.session() as s:
            s.add(row)
        readcache.invalidate()
    return run_id


def active_count(s: Any, pipeline_name: str) -> int:
    """PENDING and RUNNING runs of a pipeline, on every server."""
    n = s.scalar(
        select(func.count())
        .select_from(PipelineRun)
        .where(PipelineRun.pipeline_name == pipeline_name, PipelineRun.status.in_(RUNNING_STATES))
    )
    return int(n or 0)


def waiting_or_active_count(s: Any, pipeline_name: str) -> int:
    """QUEUED, PENDING and RUNNING runs of a pipeline: what it already has to run."""
    n = s.scalar(
        select(func.count())
        .select_from(PipelineRun)
        .where(
            PipelineRun.pipeline_name == pipeline_name,
            PipelineRun.status.in_((RunStatus.QUEUED.value, *RUNNING_STATES)),
        )
    )
    return int(n or 0)


def claim(
    db: Database, limit: int, max_instances: Callable[[str], int], now: datetime | None = None
) -> list[PipelineRun]:
    """Claim up to ``limit`` due QUEUED runs for this process (oldest first), skipping
    runs whose pipeline is at its ``max_instances`` (however many of them wait)."""
    if limit <= 0:
        return []
    now = now or utcnow()
    claimed: list[PipelineRun] = []
    with db.session() as s:
        runs.lock_claims(s)
        counts: dict[str, int] = {}
        full: set[str] = set()  # pipelines at their max_instances: left out of the next read
        while len(claimed) < limit:
            due = select(PipelineRun).where(
                PipelineRun.status == RunStatus.QUEUED.value,
                (PipelineRun.not_before.is_(None)) | (PipelineRun.not_before <= now),
            )
            if full:
                due = due.where(PipelineRun.pipeline_name.not_in(full))
            candidates = s.scalars(
                due.order_by(PipelineRun.queued_at, PipelineRun.id).limit(max(limit * 4, 20))
            ).all()
            if not candidates:
                break
            progress = (len(claimed), len(full))
            # each candidate is claimed, lost to a cancel, or fills its pipeline: the next
            # read has fewer rows to choose from, so this ends; a pipeline with a long
            # backlog at its limit never holds back the others
            for run in candidates:
                name = run.pipeline_name
                if name not in counts:
                    counts[name] = active_count(s, name)
                if counts[name] >= max_instances(name):
                    full.add(name)
                    continue
                if not _take(s, run):
                    continue
                counts[name] += 1
                claimed.append(run)
                if len(claimed) >= limit:
                    break
            if (len(claimed), len(full)) == progress:
                break  # only runs cancelled meanwhile: the next round reads again
        s.expunge_all()
    if claimed:
        readcache.invalidate()
    return claimed


def _take(s: Any, run: PipelineRun) -> bool:
    """Move ``run`` to PENDING for this process — only while it is still QUEUED: a cancel
    committed since it was read (the read locks nothing) must not be overwritten, or the
    run would run anyway."""
    owner = {
        "status": RunStatus.PENDING.value,
        "runner_host": runs.HOSTNAME,
        "runner_pid": os.getpid(),
        "runner_started": runs.process_started(os.getpid()),
    }
    return runs.move_if(s, run, [PipelineRun.status == RunStatus.QUEUED.value], **owner)


def cancel(db: Database, run_id: uuid.UUID) -> str:
    """``cancelled`` (a QUEUED run, ended now), ``requested`` (a running run: its server
    stops it), or ``finished`` (nothing to do). ``RunNotFound`` for an unknown id."""
    now = utcnow()
    with db.session() as s:
        begin_write(s)  # SQLite: a claim cannot take the run between this read and write
        run = s.get(PipelineRun, run_id, with_for_update=is_postgres(db.engine))
        if run is None:
            raise RunNotFound(f"run {run_id} not found")
        if run.status in FINAL_STATUSES:
            return "finished"
        if run.status == RunStatus.QUEUED.value:
            run.status = RunStatus.CANCELLED.value
            run.finished_at = now
            run.failure_reason = CANCELLED_BEFORE_START
            outcome = "cancelled"
        else:
            run.cancel_requested_at = run.cancel_requested_at or now
            outcome = "requested"
    readcache.invalidate()
    return outcome


def cancel_requested(db: Database, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``run_ids`` have been asked to stop."""
    if not run_ids:
        return set()
    with db.session() as s:
        rows = s.scalars(
            select(PipelineRun.id).where(
                PipelineRun.id.in_(run_ids), PipelineRun.cancel_requested_at.is_not(None)
            )
        )
        return set(rows)


def env_of(run: PipelineRun) -> dict[str, str]:
    """The run's parameters (``env_overrides``)."""
    if not run.env_overrides:
        return {}
    data = json.loads(run.env_overrides)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
