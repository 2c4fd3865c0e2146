"""What the pages show of the orchestrator: a pipeline's schedules (with their next run),
limits, retries and triggers; the number of attempts a run may have; the other attempts,
the upstream run and the downstream runs of a run; a pipeline's page: the retention in
effect and what the next cleanup pass would do to its runs (a dry run of the planner for
that pipeline only).

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
from fastflow.errors import FastflowError, PipelineNotFound
from fastflow.lifecycle import selection
from fastflow.lifecycle.executor import pipeline_policy
from fastflow.lifecycle.policy import MB, ActionKind, Policy
from fastflow.lifecycle.summary import PlanEntry
from fastflow.orchestration import ticker
from fastflow.orchestration.followup import retry_spec
from fastflow.runs import pipelines
from fastflow.runs import stats as runstats
from fastflow.runs import store as runs
from fastflow.security import public_text

RELATED_LIMIT = 200
PREVIEW_LINES = 20  # planned actions listed on a pipeline page
PREVIEW_LIMIT = 10_000  # planned actions counted at most (the page says "at least")


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


# --- one pipeline's page --------------------------------------------------------------


def _retention(
    ctx: Context, pipeline: pipelines.Pipeline | None, policy: Policy
) -> list[dict[str, Any]]:
    """The rules in effect, each with where its value comes from."""
    own = pipeline.retention if pipeline is not None else pipelines.Retention()
    rows = []
    for label, override, setting, value, text in (
        (
            "Finished runs kept",
            own.runs,
            "LOG_RETENTION_RUNS",
            policy.keep_runs,
            f"the newest {policy.keep_runs:,}" if policy.keep_runs else "all",
        ),
        (
            "Maximum age",
            own.days,
            "LOG_RETENTION_DAYS",
            policy.max_age_days,
            f"{policy.max_age_days} days" if policy.max_age_days else "unlimited",
        ),
        (
            "Maximum log size",
            own.max_size_mb,
            "LOG_MAX_SIZE_MB",
            policy.max_log_bytes,
            f"{policy.max_log_bytes // MB} MB" if policy.max_log_bytes else "unlimited",
        ),
        (
            "Newest success",
            own.keep_last_success,
            "LOG_RETENTION_KEEP_LAST_SUCCESS",
            policy.keep_last_success,
            "always kept" if policy.keep_last_success else "not kept by a rule",
        ),
        (
            "Newest failures",
            own.keep_failed,
            "LOG_RETENTION_KEEP_FAILED",
            policy.keep_failed,
            (
                f"the newest {policy.keep_failed:,} always kept"
                if policy.keep_failed
                else "not kept by a rule"
            ),
        ),
    ):
        source = "pipeline.json" if override is not None else setting
        rows.append({"label": label, "text": text, "value": value, "source": source})
    return rows


def next_pass_preview(ctx: Context, name: str, now: datetime) -> dict[str, Any]:
    """What the next cleanup pass would do to the runs of ``name``: the planner's dry run
    for this pipeline only (read-only). ``deletions``/``truncations`` with their log
    bytes, the first ``PREVIEW_LINES`` actions in ``lines``, ``capped`` when counting
    stopped at ``PREVIEW_LIMIT`` actions, and ``kept``: the runs retention would remove
    that a pin or a keep rule keeps, by reason."""
    policy = pipeline_policy(ctx.settings, name)
    out: dict[str, Any] = {
        "deletions": 0,
        "deletion_bytes": 0,
        "truncations": 0,
        "truncation_bytes": 0,
        "lines": [],
        "capped": False,
        "kept": dict(selection.kept_counts(ctx.db, name, policy, now)),
    }
    batches = [
        selection.deletion_candidates(ctx.db, name, policy, now),
        selection.truncation_candidates(ctx.db, name, policy, now, ctx.settings.logs_root),
    ]
    for found in batches:
        for batch in found:
            for action in batch:
                size = action.run.log_size or 0
                if action.kind is ActionKind.TRUNCATE_LOG:
                    out["truncations"] += 1
                    out["truncation_bytes"] += max(0, size - (policy.max_log_bytes or 0))
                else:
                    out["deletions"] += 1
                    out["deletion_bytes"] += size
                if len(out["lines"]) < PREVIEW_LINES:
                    entry = PlanEntry.of(action)
                    out["lines"].append(
                        {**entry.__dict__, "started_at": action.run.started_at.isoformat()}
                    )
            if out["deletions"] + out["truncations"] >= PREVIEW_LIMIT:
                out["capped"] = True
                break
        if out["capped"]:
            break
    return out


def pipeline_page(ctx: Context, name: str, now: datetime) -> dict[str, Any] | None:
    """What ``/pipelines/{name}`` shows (None when ``name`` has neither a folder nor
    runs): ``pipeline_name``, ``pipeline`` (None when its folder is gone or invalid, then
    ``problem`` says why), ``schedules``, ``max_instances``, ``retries``, ``on_success``,
    ``on_failure``, ``retention`` (rules and their source), ``preview`` (the next pass,
    see ``next_pass_preview``) and ``s3_enabled``."""
    try:
        pipelines.validate_name(name)
    except FastflowError:
        return None
    pipeline: pipelines.Pipeline | None = None
    problem: str | None = None
    try:
        pipeline = pipelines.load(ctx.settings.pipelines_dir, name)
    except PipelineNotFound:
        problem = "its folder is gone from PIPELINES_DIR: only its past runs are shown"
    except FastflowError as e:
        problem = public_text(str(e), ctx.settings)
    folder = (ctx.settings.pipelines_dir / name / "main.py").is_file()
    if pipeline is None and not folder and not runstats.has_runs(ctx.db, name):
        return None
    schedules: list[dict[str, Any]] = []
    if pipeline is not None:
        nexts = {
            (n.pipeline_name, n.schedule_key): n.next_run_at
            for n in ticker.next_runs(ctx, [pipeline], now)
        }
        schedules = _schedules(pipeline, nexts)
    policy = pipeline_policy(ctx.settings, name)
    config = pipeline.config if pipeline is not None else None
    return {
        "pipeline_name": name,
        "pipeline": pipeline,
        "problem": problem,
        "schedules": schedules,
        "max_instances": config.max_instances if config else None,
        "retries": config.retries.max if config else None,
        "on_success": list(config.triggers.on_success) if config else [],
        "on_failure": list(config.triggers.on_failure) if config else [],
        "retention": _retention(ctx, pipeline, policy),
        "preview": next_pass_preview(ctx, name, now),
        "s3_enabled": ctx.settings.s3_backup_enabled,
    }
