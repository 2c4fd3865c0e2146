"""Prometheus metrics, computed from the database at scrape time (nothing kept in memory,
so several server processes report the same numbers)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from fastflow import notify
from fastflow.archive import audit, ledger
from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import utcnow
from fastflow.lifecycle import disk, records, selection
from fastflow.lifecycle.cleanup import pipeline_policy
from fastflow.lifecycle.policy import KeepReason
from fastflow.notify.models import NotificationDelivery
from fastflow.runs import store as run_store

Family = GaugeMetricFamily | CounterMetricFamily


def _one(kind: type[Family], name: str, doc: str, value: float | None) -> Family:
    family = kind(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


class FastflowCollector(Collector):
    """One helper per metric family; every value comes from the database."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[Family]:
        db = self._ctx.db
        yield from _run_metrics(db)
        yield from _pass_metrics(records.pass_stats(db))
        yield from _archive_metrics(*ledger.totals(db))
        yield _one(
            GaugeMetricFamily,
            "fastflow_retention_backlog_oldest_seconds",
            "Age of the oldest run due for deletion but not yet archived (0 = no backlog)",
            self._backlog_age(utcnow()),
        )
        yield from _notification_metrics(self._ctx)
        yield from _verification_metrics(self._ctx)
        yield _one(
            GaugeMetricFamily,
            "fastflow_run_incidents_open",
            "Pipelines whose last attempt failed and that have not succeeded since",
            len(notify.open_run_incidents(self._ctx)),
        )
        yield from _kept_metrics(self._ctx, utcnow())
        yield from _disk_metrics(self._ctx)

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


def _kept_metrics(ctx: Context, now: datetime) -> Iterator[Family]:
    """Runs that count/age retention would remove (or, pinned, truncate) but that a pin
    or a keep rule keeps, by rule (issue 16)."""
    counts: Counter[str] = Counter()
    for name in selection.pipeline_names(ctx.db):
        counts.update(selection.kept_counts(ctx.db, name, pipeline_policy(ctx.settings, name), now))
    g = GaugeMetricFamily(
        "fastflow_retention_kept_runs",
        "Runs retention would remove that a pin or keep rule keeps, by reason",
        labels=["reason"],
    )
    for reason in KeepReason:
        g.add_metric([reason.value], counts.get(reason.value, 0))
    yield g


def _disk_metrics(ctx: Context) -> Iterator[Family]:
    """LOGS_DIR's file system and its forecast (``lifecycle.disk``); none when the file
    system cannot be measured (the scrape still answers)."""
    try:
        figures = disk.measure(ctx)
    except OSError:
        return
    days = disk.days_until_full(figures.free_bytes, figures.growth_bytes_per_day)
    yield _one(
        GaugeMetricFamily,
        "fastflow_logs_free_bytes",
        "Free bytes of the file system of LOGS_DIR",
        figures.free_bytes,
    )
    yield _one(
        GaugeMetricFamily,
        "fastflow_logs_growth_bytes_per_day",
        "Local log growth per day (runs of the last 7 days)",
        figures.growth_bytes_per_day,
    )
    yield _one(
        GaugeMetricFamily,
        "fastflow_archive_backlog_bytes",
        "Log bytes of finished runs due for archive and deletion",
        figures.backlog_bytes,
    )
    yield _one(
        GaugeMetricFamily,
        "fastflow_disk_days_until_full",
        "Days until LOGS_DIR is full at the current growth (+Inf: no growth)",
        math.inf if days is None else days,
    )


def _verification_metrics(ctx: Context) -> Iterator[Family]:
    """The recorded archive verifications (issue 16, ``archive.audit``)."""
    stats = audit.verification_stats(ctx)
    last = stats.last_finished_at
    yield _one(
        GaugeMetricFamily,
        "fastflow_archive_last_verification_timestamp_seconds",
        "Unix time the last archive verification finished",
        last.timestamp() if last else None,
    )
    yield _one(
        GaugeMetricFamily,
        "fastflow_archive_objects_damaged",
        "Objects (and manifests) the last archive verification found missing or altered",
        stats.last_damaged,
    )
    yield _one(
        CounterMetricFamily,
        "fastflow_archive_objects_verified",
        "Archived objects checked by the recorded verifications (HEAD and re-hash)",
        stats.objects_verified_total,
    )


def _run_metrics(db: Database) -> Iterator[Family]:
    by_status, local_bytes = run_store.status_counts(db), run_store.local_log_bytes(db)
    g = GaugeMetricFamily("fastflow_runs", "Runs in the database by status", labels=["status"])
    for status, n in by_status:
        g.add_metric([status], n)
    yield g
    yield _one(
        GaugeMetricFamily,
        "fastflow_local_log_bytes",
        "Bytes of run logs on local disk",
        local_bytes,
    )


def _pass_metrics(stats: records.PassStats) -> Iterator[Family]:
    yield _one(CounterMetricFamily, "fastflow_cleanup_passes", "Cleanup passes run", stats.passes)
    yield _one(
        GaugeMetricFamily,
        "fastflow_cleanup_last_pass_duration_seconds",
        "Duration of the last finished cleanup pass",
        stats.last_duration_s,
    )
    yield _one(
        CounterMetricFamily,
        "fastflow_backup_failures",
        "Backup failures recorded (the newest 1,000 are kept)",
        stats.failures_total,
    )
    yield _one(
        GaugeMetricFamily,
        "fastflow_backup_failures_unresolved",
        "Backup failures not yet resolved by a later pass",
        stats.failures_unresolved,
    )


def _archive_metrics(runs: int, stored_bytes: int) -> Iterator[Family]:
    yield _one(
        CounterMetricFamily, "fastflow_archived_runs", "Runs archived and verified in S3", runs
    )
    yield _one(
        CounterMetricFamily,
        "fastflow_archived_bytes",
        "Bytes archived and verified in S3",
        stored_bytes,
    )


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
