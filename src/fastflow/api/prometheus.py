"""Prometheus metrics, computed from the database at scrape time (nothing kept in memory,
so several server processes report the same numbers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from fastflow.context import Context
from fastflow.db.models import ArchivedRun, BackupFailure, CleanupPass, PipelineRun, utcnow
from fastflow.lifecycle import selection
from fastflow.lifecycle.cleanup import pipeline_policy
from fastflow.notify.models import NotificationDelivery


class FastflowCollector(Collector):
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ctx = self._ctx
        with ctx.db.session() as s:
            by_status = s.execute(
                select(PipelineRun.status, func.count()).group_by(PipelineRun.status)
            ).all()
            local_bytes = s.scalar(
                select(func.coalesce(func.sum(PipelineRun.log_size), 0)).where(
                    PipelineRun.log_file.is_not(None)
                )
            )
            archived = s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(ArchivedRun.log_size), 0),
                    func.coalesce(func.sum(ArchivedRun.metrics_size), 0),
                )
            ).one()
            passes = s.scalar(select(func.count()).select_from(CleanupPass))
            last = s.scalars(
                select(CleanupPass)
                .where(CleanupPass.finished_at.is_not(None))
                .order_by(CleanupPass.id.desc())
                .limit(1)
            ).first()
            failures_total = s.scalar(select(func.count()).select_from(BackupFailure))
            unresolved = s.scalar(
                select(func.count())
                .select_from(BackupFailure)
                .where(BackupFailure.resolved_at.is_(None))
            )
        g = GaugeMetricFamily("fastflow_runs", "Runs in the database by status", labels=["status"])
        for status, n in by_status:
            g.add_metric([status], n)
        yield g
        c = CounterMetricFamily("fastflow_cleanup_passes", "Cleanup passes run")
        c.add_metric([], passes or 0)
        yield c
        g = GaugeMetricFamily(
            "fastflow_cleanup_last_pass_duration_seconds",
            "Duration of the last finished cleanup pass",
        )
        if last is not None and last.summary:
            g.add_metric([], float(json.loads(last.summary).get("duration_s", 0.0)))
        yield g
        c = CounterMetricFamily("fastflow_archived_runs", "Runs archived and verified in S3")
        c.add_metric([], archived[0])
        yield c
        c = CounterMetricFamily("fastflow_archived_bytes", "Bytes archived and verified in S3")
        c.add_metric([], int(archived[1] or 0) + int(archived[2] or 0))
        yield c
        c = CounterMetricFamily(
            "fastflow_backup_failures", "Backup failures recorded (the newest 1,000 are kept)"
        )
        c.add_metric([], failures_total or 0)
        yield c
        g = GaugeMetricFamily(
            "fastflow_backup_failures_unresolved",
            "Backup failures not yet resolved by a later pass",
        )
        g.add_metric([], unresolved or 0)
        yield g
        g = GaugeMetricFamily("fastflow_local_log_bytes", "Bytes of run logs on local disk")
        g.add_metric([], local_bytes or 0)
        yield g
        g = GaugeMetricFamily(
            "fastflow_retention_backlog_oldest_seconds",
            "Age of the oldest run due for deletion but not yet archived (0 = no backlog)",
        )
        g.add_metric([], self._backlog_age(utcnow()))
        yield g
        yield from _notification_metrics(ctx)

    def _backlog_age(self, now: datetime) -> float:
        ctx = self._ctx
        oldest: datetime | None = None
        for name in selection.pipeline_names(ctx.db):
            for batch in selection.deletion_candidates(
                ctx.db, name, pipeline_policy(ctx.settings, name), now, batch=1
            ):
                started = batch[0].run.started_at
                oldest = started if oldest is None or started < oldest else oldest
                break
        return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def _notification_metrics(ctx: Context) -> Iterator[CounterMetricFamily]:
    c = CounterMetricFamily(
        "fastflow_notification_failures",
        "Failed notification deliveries (recent records)",
        labels=["channel"],
    )
    with ctx.db.session() as s:
        rows = s.execute(
            select(NotificationDelivery.channel, func.count())
            .where(NotificationDelivery.ok.is_(False))
            .group_by(NotificationDelivery.channel)
        ).all()
    counts = dict.fromkeys(("email", "teams"), 0)
    counts.update({channel: n for channel, n in rows})
    for channel, n in sorted(counts.items()):
        c.add_metric([channel], n)
    yield c


def registry_for(ctx: Context) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FastflowCollector(ctx))
    return registry
