"""Disk pressure of LOGS_DIR (issue 16): free space, local log growth, the archive
backlog, and a forecast of the days until the file system is full.

``assess`` is PURE (figures + settings -> warning, cause, words); ``measure`` reads the
file system and the database (cheap: ``statvfs``, one index range sum over the runs of
the last 7 days, and per pipeline the planner's boundaries and one SQL sum of the due
runs); ``check`` raises or resolves the ``("disk", "logs")`` incident (bell, e-mail,
Teams). Nothing here deletes anything: with S3 failing, unarchived logs stay until they
are archived, and a full LOGS_DIR stops new runs (``runs.runner``) instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from fastflow.context import Context
from fastflow.db.models import PipelineRun, utcnow
from fastflow.lifecycle import records, selection
from fastflow.lifecycle.executor import pipeline_policy
from fastflow.notify import system
from fastflow.runs.runner import free_space, min_free_bytes, size_text
from fastflow.security import redact

KIND, KEY = "disk", "logs"
GROWTH_WINDOW = timedelta(days=7)
MIN_SPAN = timedelta(days=1)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figures:
    """What ``measure`` found."""

    free_bytes: int
    total_bytes: int
    growth_bytes_per_day: float
    backlog_runs: int
    backlog_bytes: int
    min_free_bytes: int
    unresolved_backup_failures: int = 0
    latest_backup_failure: str | None = None
    s3_enabled: bool = False


@dataclass(frozen=True)
class Assessment:
    """The forecast and, when ``warning``, the incident's words."""

    days_until_full: float | None  # None: no growth
    warning: bool
    cause: str | None
    title: str
    detail: str


def days_until_full(free: int, growth_per_day: float) -> float | None:
    """Days until ``free`` bytes are used up at ``growth_per_day`` (None: never)."""
    if growth_per_day <= 0:
        return None
    return max(0.0, free / growth_per_day)


def _cause(f: Figures) -> str:
    if f.unresolved_backup_failures:
        latest = f"; latest: {f.latest_backup_failure}" if f.latest_backup_failure else ""
        return (
            f"S3 backup failing ({f.unresolved_backup_failures} unresolved backup "
            f"failure(s){latest}): nothing is deleted before it is archived, so logs pile up"
        )
    if f.backlog_bytes:
        return (
            f"{size_text(f.backlog_bytes)} in {f.backlog_runs} run(s) wait for archive and "
            "deletion by the next cleanup pass"
        )
    return (
        "the logs grow faster than retention removes them: give LOGS_DIR more space or "
        "lower LOG_RETENTION_RUNS / LOG_RETENTION_DAYS / LOG_MAX_SIZE_MB"
    )


def assess(f: Figures, warn_days: float) -> Assessment:
    """Warn when LOGS_DIR is full (less than a run needs to start) or, with
    ``warn_days`` > 0, when it fills up in fewer days than that at the current growth."""
    days = days_until_full(f.free_bytes, f.growth_bytes_per_day)
    full = f.free_bytes < f.min_free_bytes
    soon = warn_days > 0 and days is not None and days < warn_days
    warning = full or soon
    if full:
        title = "LOGS_DIR is full: new runs are refused"
    elif days is not None:
        title = f"LOGS_DIR fills up: full in about {days:.1f} days"
    else:
        title = "LOGS_DIR has room"
    cause = _cause(f) if warning else None
    lines = [
        f"Free: {size_text(f.free_bytes)} of {size_text(f.total_bytes)} "
        f"(a run needs {size_text(f.min_free_bytes)} to start)",
        f"Growth: {size_text(f.growth_bytes_per_day)} per day (runs of the last 7 days)",
        f"Waiting for archive and deletion: {size_text(f.backlog_bytes)} in "
        f"{f.backlog_runs} run(s)",
        "Forecast: "
        + (f"full in {days:.1f} days" if days is not None else "no growth")
        + (f" (warning below DISK_WARN_DAYS={warn_days:g})" if warn_days > 0 else ""),
    ]
    if cause:
        lines.append(f"Cause: {cause}")
        lines.append("Nothing unarchived is deleted to make room.")
    return Assessment(days, warning, cause, title, "\n".join(lines))


def _growth_per_day(ctx: Context, now: datetime) -> float:
    """Bytes per day of the logs of the runs started in the last 7 days (over the days
    fastflow has had runs, at least one)."""
    since = now - GROWTH_WINDOW
    with ctx.db.session() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(PipelineRun.log_size), 0)).where(
                PipelineRun.started_at >= since
            )
        )
        oldest: datetime | None = s.scalar(select(func.min(PipelineRun.started_at)))
    if oldest is None:
        return 0.0
    span: timedelta = min(GROWTH_WINDOW, max(MIN_SPAN, now - oldest))
    return float(total or 0) / (span / timedelta(days=1))


def measure(ctx: Context, now: datetime | None = None) -> Figures:
    """The figures of LOGS_DIR now."""
    now = now or utcnow()
    free, total = free_space(ctx.settings.logs_root)
    runs = size = 0
    for name in selection.pipeline_names(ctx.db):
        n, b = selection.due_totals(ctx.db, name, pipeline_policy(ctx.settings, name), now)
        runs, size = runs + n, size + b
    failures = records.unresolved_count(ctx)
    latest = None
    if failures:
        recent = records.recent_failures(ctx, 1)
        latest = recent[0]["error_message"] if recent else None
    return Figures(
        free_bytes=free,
        total_bytes=total,
        growth_bytes_per_day=_growth_per_day(ctx, now),
        backlog_runs=runs,
        backlog_bytes=size,
        min_free_bytes=min_free_bytes(total),
        unresolved_backup_failures=failures,
        latest_backup_failure=latest,
        s3_enabled=ctx.settings.s3_backup_enabled,
    )


def report(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Figures and forecast as the API and the Settings page show them."""
    now = now or utcnow()
    f = measure(ctx, now)
    a = assess(f, ctx.settings.disk_warn_days)
    data = asdict(f)
    for private in ("unresolved_backup_failures", "latest_backup_failure", "s3_enabled"):
        data.pop(private)
    data.update(
        days_until_full=a.days_until_full,
        warn_days=ctx.settings.disk_warn_days,
        warning=a.warning,
        cause=redact(a.cause, ctx.settings) if a.cause else None,
        checked_at=now.isoformat(),
    )
    return data


_last_check: list[float] = []  # monotonic time of this process's last ``check_soon``
RUN_START_INTERVAL_S = 300.0


def check_soon(ctx: Context) -> None:
    """``check`` at the start of a run, at most once per ``RUN_START_INTERVAL_S`` per
    process (a run start must stay cheap). Never raises."""
    now = time.monotonic()
    if _last_check and now - _last_check[-1] < RUN_START_INTERVAL_S:
        return
    _last_check[:] = [now]
    check(ctx)


def check(ctx: Context, now: datetime | None = None) -> Assessment | None:
    """Measure, then raise the disk incident (below ``DISK_WARN_DAYS`` or full) or
    resolve it. Never raises (a failure is logged; None is returned)."""
    try:
        a = assess(measure(ctx, now), ctx.settings.disk_warn_days)
        if a.warning:
            system.raise_incident(ctx, KIND, KEY, a.title, a.detail, now=now)
        else:
            system.resolve_incident(ctx, KIND, KEY, a.detail, now=now)
        return a
    except Exception as e:
        log.warning("checking the disk of LOGS_DIR failed: %s", redact(str(e), ctx.settings))
        return None
