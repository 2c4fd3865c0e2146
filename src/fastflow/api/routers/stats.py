"""``/api/stats/overview`` and ``/api/pipelines/{name}/stats``: the figures of the overview
dashboard and of the pipeline pages, from indexed aggregates (``runs.stats``).

Any logged-in role may read them. Days are UTC days. Answers are cached for one second
(``db.cache``), like the other polled reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from fastflow import notify
from fastflow.api.deps import CtxDep, PrincipalDep
from fastflow.api.schemas import OverviewOut, PipelineStatsOut
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import utcnow
from fastflow.errors import FastflowError, PipelineNotFound
from fastflow.lifecycle import records
from fastflow.lifecycle.policy import FAILED_STATUSES, age_cutoff, policy_for
from fastflow.orchestration import ticker
from fastflow.runs import pipelines
from fastflow.runs import stats as runstats

router = APIRouter(prefix="/api", tags=["stats"])

NEXT_RUNS = 10
DISK_HISTORY = 90
DaysQuery = Query(ge=1, le=runstats.MAX_DAYS, description="UTC days, today included")


def _next_runs(
    ctx: Context, found: list[pipelines.Pipeline], now: datetime
) -> list[dict[str, str]]:
    """The next scheduled run of each pipeline that has one (its earliest enabled
    schedule), soonest first, at most ``NEXT_RUNS``."""
    soonest: dict[str, datetime] = {}
    for n in ticker.next_runs(ctx, found, now):
        if n.next_run_at is not None and (
            n.pipeline_name not in soonest or n.next_run_at < soonest[n.pipeline_name]
        ):
            soonest[n.pipeline_name] = n.next_run_at
    ordered = sorted(soonest.items(), key=lambda item: (item[1], item[0]))[:NEXT_RUNS]
    return [{"pipeline_name": name, "next_run_at": at.isoformat()} for name, at in ordered]


def _retention_rules(
    ctx: Context, found: list[pipelines.Pipeline], now: datetime
) -> list[runstats.RetentionRule]:
    """The deletion rules in effect for every pipeline that has runs: the global settings
    with the overrides of its ``pipeline.json`` (as ``lifecycle.executor.pipeline_policy``;
    a pipeline whose folder is gone or invalid gets the global rules)."""
    overrides = {p.name: p.retention for p in found}
    rules = []
    for name in runstats.pipeline_names(ctx.db):
        policy = policy_for(ctx.settings, overrides.get(name))
        if policy.limits_deletion:
            rules.append(
                runstats.RetentionRule(
                    name,
                    keep_runs=policy.keep_runs,
                    cutoff=age_cutoff(policy, now),
                    keep_last_success=policy.keep_last_success,
                    keep_failed=policy.keep_failed,
                    failed_statuses=FAILED_STATUSES,
                )
            )
    return rules


def _pass_marker(ctx: Context) -> tuple[int, str] | None:
    """The newest cleanup pass (id, end); None while it runs (its deletions and
    truncations change the local log bytes until it ends)."""
    newest = records.recent_passes(ctx, 1)
    if not newest:
        return (0, "")
    if newest[0]["finished_at"] is None:
        return None
    return (int(newest[0]["id"]), str(newest[0]["finished_at"]))


def _disk(ctx: Context, found: list[pipelines.Pipeline], now: datetime) -> dict[str, Any]:
    backlog = runstats.backlog(ctx.db, _retention_rules(ctx, found, now))
    return {
        "logs_bytes": runstats.local_log_bytes(ctx.db, _pass_marker(ctx), now),
        "free_bytes": runstats.free_bytes(ctx.settings.logs_root),
        "backlog_runs": backlog.runs,
        "backlog_bytes": backlog.bytes,
    }


def _last_pass(ctx: Context) -> dict[str, Any] | None:
    """The summary of the newest finished cleanup pass (without its failure list), or
    None before the first one."""
    for p in records.recent_passes(ctx, 5):
        if p["finished_at"] is None:
            continue  # still running
        out: dict[str, Any] = {
            "trigger": p["trigger"],
            "pass_id": p["id"],
            "started_at": p["started_at"],
            "finished_at": p["finished_at"],
            "archived_runs": p["archived_runs"],
            "deleted_runs": p["deleted_runs"],
            "backup_failures": p["backup_failures"],
            "bytes_archived": p["bytes_archived"],
        }
        out.update(p["summary"])
        out["pass_id"] = p["id"]
        out["error"] = out.get("error") or p["error"]
        return out
    return None


def overview_figures(ctx: Context, days: int, now: datetime) -> dict[str, Any]:
    """The body of ``GET /api/stats/overview``."""
    by_day = runstats.runs_by_day(ctx.db, max(days, 7), now)
    found = pipelines.discover(ctx.settings.pipelines_dir)
    return {
        "runs_by_day": by_day[-days:],
        "success_rate_7d": runstats.success_rate(by_day[-7:]),
        "open_incidents": {
            "run_failures": len(notify.open_run_incidents(ctx)),
            "backup_failures": records.unresolved_count(ctx),
            "integrity": len(notify.open_incidents(ctx, "integrity")),
        },
        "next_runs": _next_runs(ctx, found, now),
        "disk": _disk(ctx, found, now),
        "last_pass": _last_pass(ctx),
        "runs_24h": runstats.status_counts_since(ctx.db, now - timedelta(hours=24)),
        "disk_history": runstats.disk_samples(ctx.db, DISK_HISTORY),
    }


@router.get("/stats/overview", response_model=OverviewOut)
def overview(ctx: CtxDep, _: PrincipalDep, days: Annotated[int, DaysQuery] = 14) -> JSONResponse:
    """What ran, what failed, what runs next, the disk: ``runs_by_day`` (every UTC day of
    the last ``days`` days, today included, zeros too), ``success_rate_7d`` (SUCCESS /
    finished runs of the last 7 UTC days, null without any), ``open_incidents``,
    ``next_runs``, ``disk`` (local log bytes, free bytes, the retention backlog),
    ``last_pass`` (null before the first pass), ``runs_24h`` (runs started in the last
    24 hours by status) and ``disk_history`` (the disk after each recent pass)."""
    key = ("stats-overview", ctx.settings.database_url, days)
    return JSONResponse(readcache.cached(key, lambda: overview_figures(ctx, days, utcnow())))


def _known(ctx: Context, name: str) -> None:
    """``PipelineNotFound`` unless ``name`` has a folder in PIPELINES_DIR or runs."""
    try:
        pipelines.validate_name(name)
    except FastflowError:
        raise PipelineNotFound(f"pipeline {name!r} not found") from None
    folder = ctx.settings.pipelines_dir / name
    if not (folder / "main.py").is_file() and not runstats.has_runs(ctx.db, name):
        raise PipelineNotFound(
            f"pipeline {name!r} not found: it has no folder in PIPELINES_DIR and no runs"
        )


@router.get("/pipelines/{name}/stats", response_model=PipelineStatsOut)
def pipeline_stats(
    name: str, ctx: CtxDep, _: PrincipalDep, days: Annotated[int, DaysQuery] = 30
) -> JSONResponse:
    """One pipeline over the last ``days`` days: ``runs`` (every attempt counts),
    ``success_rate`` (SUCCESS / finished runs, null without any), ``duration_p50_s``
    and ``duration_p95_s`` (finished runs), and ``recent``: its last 50 runs, newest
    first. 404 for a pipeline that has neither a folder nor runs."""
    _known(ctx, name)
    key = ("stats-pipeline", ctx.settings.database_url, name, days)
    return JSONResponse(
        readcache.cached(key, lambda: runstats.pipeline_stats(ctx.db, name, days, utcnow()))
    )
