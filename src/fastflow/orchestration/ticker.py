"""Turn schedule ticks into queued runs, once per tick across every server.

Guarantees: a tick is claimed by inserting its ``schedule_ticks`` row (primary key
pipeline, schedule, time) in the same transaction as its run, so two servers never
queue the same tick twice; ticks missed while no server ran are coalesced into one run
when the latest is younger than the schedule's ``misfire_grace_seconds`` and otherwise
skipped and logged; with ``on_overlap: skip`` a tick that finds ``max_instances`` runs
of the pipeline queued, pending or running is recorded as skipped, with ``queue`` it
waits as QUEUED. A schedule seen for the first time starts now (nothing in the past
fires).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from fastflow.context import Context
from fastflow.db.models import ScheduleTick, Trigger, utcnow
from fastflow.orchestration import queue
from fastflow.orchestration.schedules import due, next_fire
from fastflow.orchestration.skipped_folders import SkippedFolders
from fastflow.runs import pipelines
from fastflow.runs import store as run_store
from fastflow.runs.specs import ScheduleSpec

log = logging.getLogger("fastflow.orchestration")
TICK_S = 0.5
DISCOVER_TTL_S = 5.0
KEEP_TICKS = timedelta(days=1)


@dataclass(frozen=True)
class NextRun:
    pipeline_name: str
    schedule_key: str
    next_run_at: datetime | None


def last_tick(ctx: Context, pipeline: str, key: str) -> datetime | None:
    with ctx.db.session() as s:
        return s.scalar(
            select(func.max(ScheduleTick.scheduled_for)).where(
                ScheduleTick.pipeline_name == pipeline, ScheduleTick.schedule_key == key
            )
        )


def _config_id(pipeline: pipelines.Pipeline, spec: ScheduleSpec) -> str | None:
    """The run configuration a tick's run carries: the schedule's ``id``; for a schedule
    without one that has its own ``timeout`` or retries, its key (its index), under which
    those are kept — so that its runs, and their retries, get them."""
    if spec.run_config_id is not None:
        return spec.run_config_id
    config = pipeline.config
    return spec.key if spec.key in {*config.schedule_timeouts, *config.schedule_retries} else None


def _record(
    ctx: Context, pipeline: pipelines.Pipeline, spec: ScheduleSpec, at: datetime, outcome: str
) -> bool:
    """Claim tick ``at``; with outcome ``queued`` also queue its run. False when another
    server claimed it first."""
    try:
        with ctx.db.session() as s:
            run_id = None
            if outcome == "queued":
                run_id = queue.enqueue(
                    ctx.db,
                    pipeline.name,
                    Trigger.SCHEDULE.value,
                    env=spec.env or None,
                    scheduled_for=at,
                    schedule_key=spec.key,
                    run_config_id=_config_id(pipeline, spec),
                    session=s,
                )
            s.add(
                ScheduleTick(
                    pipeline_name=pipeline.name,
                    schedule_key=spec.key,
                    scheduled_for=at,
                    outcome=outcome,
                    run_id=run_id,
                )
            )
        return True
    except IntegrityError:
        return False


def fire_due(ctx: Context, pipeline: pipelines.Pipeline, spec: ScheduleSpec, now: datetime) -> str:
    """Handle one schedule at ``now``: ``baseline``, ``idle``, ``queued``, ``skipped``,
    ``stale`` or ``taken`` (another server claimed the tick)."""
    tz = ctx.settings.scheduler_timezone
    last = last_tick(ctx, pipeline.name, spec.key)
    if last is None:
        _record(ctx, pipeline, spec, now, "baseline")
        return "baseline"
    d = due(spec, last, now, tz)
    if d.fire_at is None:
        if d.skipped_stale:
            log.warning(
                "%s/%s: %d missed ticks older than %d s skipped",
                pipeline.name,
                spec.key,
                d.skipped_stale,
                spec.misfire_grace_seconds,
            )
            _record(ctx, pipeline, spec, now, "stale")
            return "stale"
        return "idle"
    outcome = "queued"
    if pipeline.config.on_overlap == "skip":
        with ctx.db.session() as s:
            # runs waiting for a free slot count too: else every tick while the server is
            # busy queued one more, and the backlog grew without bound
            if queue.waiting_or_active_count(s, pipeline.name) >= pipeline.config.max_instances:
                outcome = "skipped"
    if not _record(ctx, pipeline, spec, d.fire_at, outcome):
        return "taken"
    if d.missed:
        log.info(
            "%s/%s: %d ticks coalesced into one run (at %s, the latest; %d earlier not run)",
            pipeline.name,
            spec.key,
            d.missed + 1,
            d.fire_at.isoformat(timespec="seconds"),
            d.missed,
        )
    if outcome == "skipped":
        log.info(
            "%s/%s: tick %s skipped: %d runs already queued or active (max_instances)",
            pipeline.name,
            spec.key,
            d.fire_at.isoformat(),
            pipeline.config.max_instances,
        )
    return outcome


def next_runs(ctx: Context, found: list[pipelines.Pipeline], now: datetime) -> list[NextRun]:
    """The next tick of every enabled schedule (for ``fastflow schedules`` and the API)."""
    tz = ctx.settings.scheduler_timezone
    return [
        NextRun(p.name, spec.key, next_fire(spec, now, tz) if p.config.enabled else None)
        for p in found
        for spec in p.config.schedules
    ]


def describe(spec: ScheduleSpec) -> str:
    """``cron */15 * * * * (Europe/Berlin)``, ``every 3600 s``, ``once at …``."""
    if spec.cron:
        return f"cron {spec.cron}" + (f" ({spec.timezone})" if spec.timezone else "")
    if spec.interval_seconds:
        return f"every {spec.interval_seconds} s"
    return f"once at {spec.once_at.isoformat() if spec.once_at else '?'}"


def schedule_rows(
    ctx: Context, now: datetime, found: list[pipelines.Pipeline] | None = None
) -> list[dict[str, Any]]:
    """Every schedule of every pipeline (of ``found``, default: every valid one) with its
    ``next_run_at`` (UTC ISO 8601) and the pipeline's last run."""
    if found is None:
        found = pipelines.discover(ctx.settings.pipelines_dir)
    nexts = {(n.pipeline_name, n.schedule_key): n.next_run_at for n in next_runs(ctx, found, now)}
    out = []
    for p in found:
        last = run_store.list_runs(ctx.db, pipeline=p.name, limit=1)
        for spec in p.config.schedules:
            at = nexts.get((p.name, spec.key))
            out.append(
                {
                    "pipeline_name": p.name,
                    "schedule_key": spec.key,
                    "schedule": describe(spec),
                    "enabled": spec.enabled and p.config.enabled,
                    "next_run_at": at.isoformat() if at else None,
                    "last_run": last[0].to_dict() if last else None,
                }
            )
    return out


def prune(ctx: Context, now: datetime) -> None:
    """Drop tick rows older than a day, keeping the newest of every schedule."""
    with ctx.db.session() as s:
        latest = dict(
            ((p, k), t)
            for p, k, t in s.execute(
                select(
                    ScheduleTick.pipeline_name,
                    ScheduleTick.schedule_key,
                    func.max(ScheduleTick.scheduled_for),
                ).group_by(ScheduleTick.pipeline_name, ScheduleTick.schedule_key)
            )
        )
        for (p, k), t in latest.items():
            s.execute(
                delete(ScheduleTick).where(
                    ScheduleTick.pipeline_name == p,
                    ScheduleTick.schedule_key == k,
                    ScheduleTick.scheduled_for < min(t, now - KEEP_TICKS),
                )
            )


class ScheduleLoop:
    """The ticker thread of ``fastflow serve``."""

    def __init__(self, ctx: Context, on_queued: Callable[[], None] | None = None) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._on_queued = on_queued
        self._found: list[pipelines.Pipeline] = []
        self._skipped = SkippedFolders(ctx)
        self._found_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="schedules", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def pipelines(self) -> list[pipelines.Pipeline]:
        if time.monotonic() - self._found_at > DISCOVER_TTL_S:
            found, skipped = pipelines.scan(self._ctx.settings.pipelines_dir)
            self._found = [p for p in found if p.config.enabled and p.config.schedules]
            self._found_at = time.monotonic()
            self._skipped.update(skipped)
        return self._found

    def run_once(self, now: datetime | None = None) -> int:
        """One round over every schedule; returns how many runs were queued."""
        now = now or utcnow()
        queued = 0
        for p in self.pipelines():
            for spec in p.config.schedules:
                try:
                    queued += fire_due(self._ctx, p, spec, now) == "queued"
                except Exception:
                    log.exception("schedule %s/%s failed", p.name, spec.key)
        return queued

    def _loop(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(TICK_S):
            try:
                queued = self.run_once()
            except Exception:  # never the end of every schedule: the next tick tries again
                log.exception("a round over the schedules failed")
                queued = 0
            if queued and self._on_queued is not None:
                self._on_queued()
            if time.monotonic() - last_prune > 600:
                try:
                    prune(self._ctx, utcnow())
                except Exception:
                    log.exception("pruning schedule ticks failed")
                last_prune = time.monotonic()
