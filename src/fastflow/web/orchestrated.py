"""What the pages show of the orchestrator: a pipeline's schedules (with their next run),
limits, retries and triggers; the number of attempts a run may have; the other attempts,
the upstream run and the downstream runs of a run.

Read-only. The few queries on ``pipeline_runs`` that ``runs.store`` has no function for
(a run's attempts, its downstream runs) are here, each bounded by ``RELATED_LIMIT``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from fastflow.errors import FastflowError
from fastflow.orchestration import ticker
from fastflow.orchestration.followup import retry_spec
from fastflow.runs import pipelines
from fastflow.runs import store as runs

RELATED_LIMIT = 200


def _schedules(
    pipeline: pipelines.Pipeline, nexts: dict[tuple[str, str], datetime | None]
) -> list[dict[str, Any]]:
    out = []
    for spec in pipeline.config.schedules:
        at = nexts.get((pipeline.name, spec.key))
        out.append(
            {
                "key": spec.key,
                "text": ticker.describe(spec),
                "enabled": spec.enabled and pipeline.config.enabled,
                "next_run_at": at.isoformat() if at else None,
            }
        )
    return out


def pipeline_items(ctx: Context, now: datetime) -> list[dict[str, Any]]:
    """One entry per discovered pipeline: ``pipeline``, ``last`` (its newest run or
    None), ``schedules`` (``text``, ``enabled``, ``next_run_at`` as UTC ISO 8601),
    ``max_instances``, ``retries``, ``on_success``, ``on_failure``."""
    found = pipelines.discover(ctx.settings.pipelines_dir)
    nexts = {
        (n.pipeline_name, n.schedule_key): n.next_run_at for n in ticker.next_runs(ctx, found, now)
    }
    items = []
    for p in found:
        last = runs.list_runs(ctx.db, pipeline=p.name, limit=1)
        items.append(
            {
                "pipeline": p,
                "last": last[0] if last else None,
                "schedules": _schedules(p, nexts),
                "max_instances": p.config.max_instances,
                "retries": p.config.retries.max,
                "on_success": list(p.config.triggers.on_success),
                "on_failure": list(p.config.triggers.on_failure),
            }
        )
    return items


def attempts_total(by_name: dict[str, pipelines.Pipeline], run: dict[str, Any]) -> int | None:
    """How many attempts the run's pipeline allows (its schedule's retries when it has its
    own), or None when the pipeline is gone."""
    pipeline = by_name.get(run["pipeline_name"])
    if pipeline is None:
        return None
    return retry_spec(pipeline, run.get("run_config_id")).max + 1


def with_attempts_total(
    found: list[pipelines.Pipeline], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``rows`` (run views), each with ``attempts_total`` added."""
    by_name = {p.name: p for p in found}
    return [{**r, "attempts_total": attempts_total(by_name, r)} for r in rows]


def _brief(run: PipelineRun) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "pipeline_name": run.pipeline_name,
        "status": run.status,
        "attempt": run.attempt or 1,
        "started_at": run.started_at.isoformat(),
    }


def attempts(ctx: Context, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attempt of ``run`` (the first one and its retries), in attempt order."""
    first = uuid.UUID(run["retry_of"] or run["id"])
    q = (
        select(PipelineRun)
        .where(or_(PipelineRun.id == first, PipelineRun.retry_of == first))
        .order_by(PipelineRun.attempt, PipelineRun.started_at)
        .limit(RELATED_LIMIT)
    )
    with ctx.db.session() as s:
        return [_brief(r) for r in s.scalars(q)]


def downstream(ctx: Context, run_id: str) -> list[dict[str, Any]]:
    """The runs that ``run_id`` triggered, oldest first."""
    q = (
        select(PipelineRun)
        .where(PipelineRun.upstream_run_id == uuid.UUID(run_id))
        .order_by(PipelineRun.started_at, PipelineRun.id)
        .limit(RELATED_LIMIT)
    )
    with ctx.db.session() as s:
        return [_brief(r) for r in s.scalars(q)]


def upstream(ctx: Context, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run that triggered ``run`` (only its id when its row is gone), or None."""
    raw = run.get("upstream_run_id")
    if not raw:
        return None
    row = runs.get(ctx.db, uuid.UUID(raw))
    if row is None:
        return {"id": raw, "pipeline_name": None, "status": None}
    return _brief(row)


def _pipeline(ctx: Context, name: str) -> dict[str, pipelines.Pipeline]:
    try:
        return {name: pipelines.load(ctx.settings.pipelines_dir, name)}
    except FastflowError:  # gone, renamed or its pipeline.json is broken now
        return {}


def related(ctx: Context, run: dict[str, Any]) -> dict[str, Any]:
    """What the run page shows about a run's place in the orchestration."""
    return {
        "attempts": attempts(ctx, run),
        "attempts_total": attempts_total(_pipeline(ctx, run["pipeline_name"]), run),
        "upstream": upstream(ctx, run),
        "downstream": downstream(ctx, run["id"]),
    }
