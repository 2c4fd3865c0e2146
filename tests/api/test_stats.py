"""``GET /api/stats/overview`` and ``GET /api/pipelines/{name}/stats``: empty database, one
real run, many runs across days and statuses, a pipeline with retries, the disk and the
retention backlog against the planner, the day filter the chart's bars link to."""

from __future__ import annotations

import json
import statistics
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from fastflow import accounts, notify
from fastflow.api import schemas
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db import cache as readcache
from fastflow.db.models import (
    ArchivedRun,
    BackupFailure,
    PipelineRun,
    utcnow,
)
from fastflow.lifecycle import selection
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.executor import pipeline_policy
from fastflow.orchestration import ticker
from fastflow.runs import pipelines
from fastflow.runs import stats as runstats
from fastflow.runs import views as runviews
from fastflow.server import create_app
from tests.conftest import MakePipeline, run_cli
from tests.seeding import seed_run

FINAL = ("SUCCESS", "FAILED", "TIMEOUT", "CANCELLED")


class Api:
    def __init__(self, client: TestClient, ctx: Context) -> None:
        self.client = client
        self.ctx = ctx
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}

    def get(self, path: str) -> Any:
        readcache.invalidate()  # rows written by the test itself, not through the app
        res = self.client.get(path, headers=self.viewer)
        assert res.status_code == 200, (path, res.status_code, res.text)
        return res.json()


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    yield Api(TestClient(create_app(ctx, schedule=False)), ctx)
    ctx.db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_api(
    request: pytest.FixtureRequest, ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    """``api`` on SQLite and on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
    ctx = bootstrap(load_settings())
    yield Api(TestClient(create_app(ctx, schedule=False)), ctx)
    ctx.db.dispose()


def _add(
    ctx: Context,
    pipeline: str,
    started: datetime,
    status: str = "SUCCESS",
    seconds: float | None = 5.0,
    attempt: int = 1,
) -> uuid.UUID:
    """A run row without files (``seconds`` None: no end yet)."""
    rid = uuid.uuid4()
    with ctx.db.session() as s:
        s.add(
            PipelineRun(
                id=rid,
                pipeline_name=pipeline,
                status=status,
                triggered_by="schedule",
                started_at=started,
                finished_at=None if seconds is None else started + timedelta(seconds=seconds),
                attempt=attempt,
            )
        )
    return rid


def _days_ending(last: date, n: int) -> list[str]:
    return [(last - timedelta(days=n - 1 - k)).isoformat() for k in range(n)]


def _today(body: dict[str, Any]) -> date:
    """The API's today (its last day), checked against the clock around the call."""
    day = date.fromisoformat(body["runs_by_day"][-1]["day"])
    assert day in {(utcnow() - timedelta(minutes=1)).date(), utcnow().date()}
    return day


# --- empty ----------------------------------------------------------------------------


def test_empty_database_has_every_day_with_zeros_and_nulls(
    api: Api, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    body = api.get("/api/stats/overview?days=14")
    today = _today(body)
    assert [d["day"] for d in body["runs_by_day"]] == _days_ending(today, 14)
    assert all(d == {"day": d["day"], **dict.fromkeys(FINAL, 0)} for d in body["runs_by_day"])
    assert body["success_rate_7d"] is None
    assert body["open_incidents"] == {"run_failures": 0, "backup_failures": 0, "integrity": 0}
    assert body["next_runs"] == []
    disk = body["disk"]
    assert (disk["logs_bytes"], disk["backlog_runs"], disk["backlog_bytes"]) == (0, 0, 0)
    assert isinstance(disk["free_bytes"], int) and disk["free_bytes"] > 0
    assert body["last_pass"] is None
    assert body["runs_24h"] == dict.fromkeys(
        ("QUEUED", "PENDING", "RUNNING", "SUCCESS", "FAILED", "TIMEOUT", "CANCELLED"), 0
    )
    assert body["disk_history"] == []
    assert schemas.OverviewOut.model_validate(body).model_dump(mode="json") == body

    assert api.get("/api/pipelines/etl/stats?days=30") == {
        "runs": 0,
        "success_rate": None,
        "duration_p50_s": None,
        "duration_p95_s": None,
        "recent": [],
    }
    assert [d["day"] for d in api.get("/api/stats/overview?days=1")["runs_by_day"]] == [
        today.isoformat()
    ]


def test_unknown_pipeline_is_404_bad_days_are_422_and_viewers_may_read(api: Api) -> None:
    headers = api.viewer
    res = api.client.get("/api/pipelines/nope/stats", headers=headers)
    assert res.status_code == 404
    assert res.json()["detail"].startswith("pipeline 'nope' not found")
    assert api.client.get("/api/pipelines/.hidden/stats", headers=headers).status_code == 404
    for bad in ("0", "367", "x"):
        assert api.client.get(f"/api/stats/overview?days={bad}", headers=headers).status_code == 422
        res = api.client.get(f"/api/pipelines/nope/stats?days={bad}", headers=headers)
        assert res.status_code == 422
    assert api.client.get("/api/stats/overview").status_code == 401
    assert api.client.get("/api/pipelines/nope/stats").status_code == 401
    # a pipeline whose folder is gone still has its runs
    _add(api.ctx, "removed", utcnow() - timedelta(hours=1))
    assert api.get("/api/pipelines/removed/stats")["runs"] == 1


# --- one real run ---------------------------------------------------------------------


def test_one_real_run(api: Api, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl", "print('hello')\n")
    res = run_cli("run", "etl")
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    run = api.get(f"/api/runs/{run_id}")

    body = api.get("/api/stats/overview?days=14")
    today = _today(body)
    assert body["runs_by_day"][-1] == {"day": today.isoformat(), **dict.fromkeys(FINAL, 0)} | {
        "SUCCESS": 1
    }
    assert sum(d["SUCCESS"] for d in body["runs_by_day"]) == 1
    assert body["success_rate_7d"] == 1.0
    assert body["runs_24h"]["SUCCESS"] == 1 and sum(body["runs_24h"].values()) == 1
    log = api.ctx.settings.logs_root / run["log_file"]
    assert body["disk"]["logs_bytes"] == run["log_size"] == log.stat().st_size > 0
    assert body["disk"]["backlog_runs"] == 0

    stats = api.get("/api/pipelines/etl/stats?days=30")
    assert stats == {
        "runs": 1,
        "success_rate": 1.0,
        "duration_p50_s": run["duration_s"],
        "duration_p95_s": run["duration_s"],
        "recent": [
            {
                "run_id": run_id,
                "status": "SUCCESS",
                "duration_s": run["duration_s"],
                "started_at": run["started_at"],
                "attempt": 1,
            }
        ],
    }
    assert schemas.PipelineStatsOut.model_validate(stats).model_dump(mode="json") == stats


# --- many runs ------------------------------------------------------------------------


def test_many_runs_across_days_and_statuses(any_api: Api, make_pipeline: MakePipeline) -> None:
    api = any_api
    make_pipeline("etl")
    midnight = datetime.combine(utcnow().date(), datetime.min.time(), tzinfo=UTC)
    expected: Counter[tuple[str, str]] = Counter()
    for back in range(20):  # today and the 19 days before it
        day = midnight - timedelta(days=back)
        for i, status in enumerate(FINAL * (1 + back % 3)):
            if back == 4 and status != "SUCCESS":
                continue  # a day of successes only
            if back == 6:
                continue  # a day without runs
            at = day + timedelta(minutes=7 * i + 1)
            if at > utcnow():
                at = day  # today's runs before now
            _add(api.ctx, "etl" if i % 2 else "other", at, status)
            expected[(at.date().isoformat(), status)] += 1
    # the edges of a UTC day: the last microsecond of yesterday, the first one of today
    _add(api.ctx, "etl", midnight - timedelta(microseconds=1), "FAILED")
    expected[((midnight - timedelta(days=1)).date().isoformat(), "FAILED")] += 1
    _add(api.ctx, "etl", midnight, "TIMEOUT")
    expected[(midnight.date().isoformat(), "TIMEOUT")] += 1
    # runs still going are not in the chart
    for status in ("RUNNING", "QUEUED", "PENDING"):
        _add(api.ctx, "etl", utcnow() - timedelta(minutes=1), status, seconds=None)

    for days in (14, 30):
        body = api.get(f"/api/stats/overview?days={days}")
        today = _today(body)
        assert today == midnight.date()
        names = _days_ending(today, days)
        assert body["runs_by_day"] == [
            {"day": d, **{s: expected[(d, s)] for s in FINAL}} for d in names
        ]
    week = _days_ending(midnight.date(), 7)
    ok = sum(expected[(d, "SUCCESS")] for d in week)
    finished = sum(expected[(d, s)] for d in week for s in FINAL)
    assert body["success_rate_7d"] == ok / finished
    zero_day = (midnight - timedelta(days=6)).date().isoformat()
    assert next(d for d in body["runs_by_day"] if d["day"] == zero_day) == {
        "day": zero_day,
        **dict.fromkeys(FINAL, 0),
    }
    last_24h = body["runs_24h"]
    assert last_24h["RUNNING"] == last_24h["QUEUED"] == last_24h["PENDING"] == 1


def test_percentiles_window_and_the_last_50(any_api: Api, make_pipeline: MakePipeline) -> None:
    api = any_api
    make_pipeline("etl")
    now = utcnow()
    durations = [float(3 * i + (i % 7)) for i in range(1, 61)]
    statuses = ["SUCCESS", "SUCCESS", "FAILED", "SUCCESS", "TIMEOUT", "CANCELLED"]
    ids = []
    for i, seconds in enumerate(durations):  # 60 runs over the last 59 hours, oldest first
        at = now - timedelta(hours=60 - i)
        ids.append(_add(api.ctx, "etl", at, statuses[i % 6], seconds))
    old = _add(api.ctx, "etl", now - timedelta(days=40), "FAILED", 1.0)  # outside 30 days
    active = _add(api.ctx, "etl", now - timedelta(seconds=30), "RUNNING", seconds=None)

    stats = api.get("/api/pipelines/etl/stats?days=30")
    assert stats["runs"] == 61  # the 60 and the active one; not the old one
    assert stats["success_rate"] == sum(1 for i in range(60) if statuses[i % 6] == "SUCCESS") / 60
    cuts = statistics.quantiles(durations, n=100, method="inclusive")  # numpy's "linear"
    assert stats["duration_p50_s"] == pytest.approx(statistics.median(durations))
    assert stats["duration_p95_s"] == pytest.approx(cuts[94])
    recent = stats["recent"]
    assert len(recent) == 50
    assert recent[0] == {
        "run_id": str(active),
        "status": "RUNNING",
        "duration_s": None,
        "started_at": recent[0]["started_at"],
        "attempt": 1,
    }
    assert [r["run_id"] for r in recent[1:]] == [str(i) for i in reversed(ids[-49:])]
    assert [r["duration_s"] for r in recent[1:]] == list(reversed(durations[-49:]))
    assert str(old) not in {r["run_id"] for r in recent}
    # a shorter window counts fewer runs; the last 50 stay the last 50
    day = api.get("/api/pipelines/etl/stats?days=1")
    assert day["runs"] == 1 + sum(1 for i in range(60) if 60 - i < 24)
    assert day["recent"] == recent


def test_pipeline_with_retries(api: Api, make_pipeline: MakePipeline, tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"
    make_pipeline(
        "flaky",
        f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n    m.write_text('x')\n    print('first try fails')\n    sys.exit(3)\n"
        "print('second try works')\n",
        config='{"retries": {"max": 2, "delay_seconds": 0}}',
    )
    res = run_cli("run", "flaky")
    assert res.returncode == 0, res.stderr
    runs = api.get("/api/runs?pipeline_name=flaky")
    assert [(r["status"], r["attempt"]) for r in runs] == [("SUCCESS", 2), ("FAILED", 1)]

    stats = api.get("/api/pipelines/flaky/stats")
    assert stats["runs"] == 2
    assert stats["success_rate"] == 0.5
    assert [(r["run_id"], r["status"], r["attempt"], r["duration_s"]) for r in stats["recent"]] == [
        (r["id"], r["status"], r["attempt"], r["duration_s"]) for r in runs
    ]
    durations = sorted(r["duration_s"] for r in runs)
    assert stats["duration_p50_s"] == pytest.approx(sum(durations) / 2)
    assert stats["duration_p95_s"] == pytest.approx(
        durations[0] + 0.95 * (durations[1] - durations[0])
    )
    body = api.get("/api/stats/overview")
    assert body["runs_by_day"][-1]["SUCCESS"] == body["runs_by_day"][-1]["FAILED"] == 1
    assert body["success_rate_7d"] == 0.5


# --- incidents, schedules, the disk -------------------------------------------------------


def test_open_incidents_count_failing_pipelines_backups_and_integrity(
    api: Api, make_pipeline: MakePipeline
) -> None:
    make_pipeline("broken", "import sys\nsys.exit(2)\n")
    assert run_cli("run", "broken").returncode != 0
    now = utcnow()
    with api.ctx.db.session() as s:
        s.add(BackupFailure(error_message="connection refused", created_at=now))
        s.add(BackupFailure(error_message="old", created_at=now, resolved_at=now))
    for key in ("etl/1/run.log", "etl/2/run.log"):
        notify.raise_incident(api.ctx, "integrity", key, "object missing", "HEAD: 404")
    notify.raise_incident(api.ctx, "disk", "logs", "disk filling", "3 days left")
    assert api.get("/api/stats/overview")["open_incidents"] == {
        "run_failures": 1,
        "backup_failures": 1,
        "integrity": 2,
    }
    notify.resolve_incident(api.ctx, "integrity", "etl/1/run.log")
    assert api.get("/api/stats/overview")["open_incidents"]["integrity"] == 1


def test_next_runs_soonest_first_one_per_pipeline(api: Api, make_pipeline: MakePipeline) -> None:
    make_pipeline("hourly", config='{"schedules": [{"cron": "17 * * * *"}]}')
    make_pipeline(
        "twice",
        config='{"schedules": [{"interval_seconds": 86400}, {"interval_seconds": 600}]}',
    )
    make_pipeline("off", config='{"enabled": false, "schedules": [{"interval_seconds": 60}]}')
    make_pipeline("manual")
    body = api.get("/api/stats/overview")
    found = pipelines.discover(api.ctx.settings.pipelines_dir)
    soonest: dict[str, datetime] = {}
    for n in ticker.next_runs(api.ctx, found, utcnow()):
        if n.next_run_at is not None:
            soonest[n.pipeline_name] = min(
                soonest.get(n.pipeline_name, n.next_run_at), n.next_run_at
            )
    assert [n["pipeline_name"] for n in body["next_runs"]] == sorted(soonest, key=soonest.get)  # type: ignore[arg-type]
    assert {n["pipeline_name"] for n in body["next_runs"]} == {"hourly", "twice"}
    times = [datetime.fromisoformat(n["next_run_at"]) for n in body["next_runs"]]
    assert times == sorted(times) and all(t > utcnow() - timedelta(seconds=5) for t in times)


def test_disk_backlog_matches_the_planner_and_the_last_pass(
    api: Api, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("etl", config='{"retention": {"runs": 2}}')
    make_pipeline("kept")
    now = utcnow()
    seeded = [seed_run(api.ctx, "etl", now - timedelta(days=10 - i)) for i in range(6)]
    seeded += [seed_run(api.ctx, "kept", now - timedelta(days=i)) for i in range(3)]
    seeded.append(seed_run(api.ctx, "gone", now - timedelta(days=200)))  # no folder
    seed_run(api.ctx, "etl", now - timedelta(days=30), status="RUNNING")  # never due
    total = sum(len(s.log_bytes) for s in seeded) + len(seeded[0].log_bytes)
    monkeypatch.setenv("LOG_RETENTION_DAYS", "100")
    api.ctx.base = load_settings()
    api.ctx.reload_settings()

    disk = api.get("/api/stats/overview")["disk"]
    plan = run_pass(api.ctx, "api", dry_run=True)
    assert disk["backlog_runs"] == plan.planned_runs == 4  # etl keeps 2; gone: its last success
    due = [e for e in plan.plan if e.action == "archive_and_delete_run"]
    assert disk["backlog_bytes"] == sum(e.bytes or 0 for e in due)
    assert disk["logs_bytes"] == total

    summary = run_pass(api.ctx, "api")  # S3 backup disabled: deleted without archive
    assert summary.deleted_runs == 4
    body = api.get("/api/stats/overview")
    assert body["disk"]["backlog_runs"] == body["disk"]["backlog_bytes"] == 0
    assert body["disk"]["logs_bytes"] == total - disk["backlog_bytes"]
    last = body["last_pass"]
    assert last["pass_id"] == summary.pass_id
    expected = summary.to_dict()
    for key in ("trigger", "deleted_runs", "deleted_logs", "archived_runs", "backup_failures"):
        assert last[key] == expected[key], key
    assert last["error"] is None
    assert schemas.PassCountsOut.model_validate(last).pass_id == summary.pass_id


@pytest.mark.parametrize(
    "env",
    [
        {"LOG_RETENTION_RUNS": "3"},
        {"LOG_RETENTION_DAYS": "5"},
        {"LOG_RETENTION_RUNS": "4", "LOG_RETENTION_DAYS": "8"},
        {"LOG_RETENTION_RUNS": "2", "LOG_RETENTION_KEEP_LAST_SUCCESS": "false"},
        {"LOG_RETENTION_DAYS": "3", "LOG_RETENTION_KEEP_FAILED": "2"},
        {"LOG_RETENTION_RUNS": "1", "LOG_RETENTION_KEEP_FAILED": "1"},
        # a keep_failed too large to list (checked run by run), statements split in parts
        {"LOG_RETENTION_DAYS": "4", "LOG_RETENTION_KEEP_FAILED": "3", "small": "1"},
    ],
)
def test_backlog_equals_the_planners_due_totals(
    any_api: Api, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """The overview counts in two statements what ``selection.due_totals`` counts per
    pipeline: count and age rules, pins, keep rules, ``pipeline.json`` overrides."""
    api = any_api
    make_pipeline("own", config='{"retention": {"runs": 5, "keep_failed": 1}}')
    make_pipeline("plain")
    now = utcnow()
    statuses = ["SUCCESS", "FAILED", "TIMEOUT", "SUCCESS", "CANCELLED", "FAILED", "SUCCESS"]
    for name in ("own", "plain", "folderless"):
        for i in range(14):
            at = now - timedelta(days=14 - i, hours=-1)  # never at an age cut-off
            rid = seed_run(api.ctx, name, at, status=statuses[i % 7]).id
            if i in (2, 9):
                with api.ctx.db.session() as s:
                    row = s.get(PipelineRun, rid)
                    assert row is not None
                    row.pinned_at, row.pinned_by = now, "test"
        seed_run(api.ctx, name, now - timedelta(days=20), status="RUNNING")
    for key, value in env.items():
        if key == "small":
            monkeypatch.setattr(runstats, "KEPT_IDS_MAX", 2)
            monkeypatch.setattr(runstats, "_MARKS_PER_STATEMENT", 2)
            monkeypatch.setattr(runstats, "_CHUNK", 1)
        else:
            monkeypatch.setenv(key, value)
    api.ctx.base = load_settings()
    api.ctx.reload_settings()

    expected_runs = expected_bytes = 0
    for name in ("folderless", "own", "plain"):
        policy = pipeline_policy(api.ctx.settings, name)
        n, b = selection.due_totals(api.ctx.db, name, policy, now)
        expected_runs, expected_bytes = expected_runs + n, expected_bytes + b
    disk = api.get("/api/stats/overview")["disk"]
    assert (disk["backlog_runs"], disk["backlog_bytes"]) == (expected_runs, expected_bytes)
    assert expected_runs > 0
    assert disk["backlog_runs"] == run_pass(api.ctx, "api", dry_run=True).planned_runs


def test_local_log_bytes_follow_run_ends_and_passes(api: Api) -> None:
    """Old runs are summed once (the base), runs that end later are added from the index;
    a change by a pass is seen once the pass ends, and every figure while it runs."""
    from fastflow.db.models import CleanupPass
    from fastflow.runs import store

    now = utcnow()
    old = [seed_run(api.ctx, "etl", now - timedelta(days=d)) for d in (3, 2, 1)]

    def shown() -> int:
        return int(api.get("/api/stats/overview")["disk"]["logs_bytes"])

    assert shown() == store.local_log_bytes(api.ctx.db) == sum(len(r.log_bytes) for r in old)
    fresh = seed_run(api.ctx, "etl", now, log=b"x" * 1234)  # ended a moment ago
    active = seed_run(api.ctx, "etl", now, status="RUNNING", log=b"y" * 10)  # no end yet
    assert shown() == store.local_log_bytes(api.ctx.db)
    assert shown() == sum(len(r.log_bytes) for r in (*old, fresh, active))
    with api.ctx.db.session() as s:  # what a pass does: truncate an old log, delete a run
        row = s.get(PipelineRun, old[0].id)
        assert row is not None
        row.log_size = 100
        s.delete(s.get(PipelineRun, old[1].id))
        s.add(CleanupPass(trigger="api", started_at=now))  # ... while it runs
    assert shown() == store.local_log_bytes(api.ctx.db)
    with api.ctx.db.session() as s:
        s.query(CleanupPass).update({"finished_at": utcnow()})
    assert shown() == store.local_log_bytes(api.ctx.db) == 100 + 1234 + 10 + len(old[2].log_bytes)


def test_last_pass_is_the_newest_finished_one(api: Api) -> None:
    from fastflow.db.models import CleanupPass

    now = utcnow()
    with api.ctx.db.session() as s:
        s.add(
            CleanupPass(
                trigger="schedule",
                started_at=now,
                finished_at=now,
                summary=None,
                error="interrupted (the process ended mid-pass)",
            )
        )
        s.add(CleanupPass(trigger="api", started_at=now))  # still running
    last = api.get("/api/stats/overview")["last_pass"]
    assert last["trigger"] == "schedule"
    assert last["error"] == "interrupted (the process ended mid-pass)"
    assert last["finished_at"] is not None


def test_disk_samples_are_the_history(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    first = seed_run(api.ctx, "etl", now - timedelta(days=1))
    with api.ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=uuid.uuid4(),
                pipeline_name="etl",
                status="SUCCESS",
                triggered_by="cli",
                started_at=now,
                bucket="b",
                log_size=1000,
                metrics_size=24,
                reason="retention",
            )
        )
    sample = runstats.record_disk_sample(api.ctx.db, api.ctx.settings.logs_root, 7, now=now)
    assert sample["local_log_bytes"] == len(first.log_bytes)
    assert sample["archived_bytes"] == 1024
    assert sample["free_bytes"] is not None and sample["free_bytes"] > 0
    history = api.get("/api/stats/overview")["disk_history"]
    assert history == [sample]
    assert history[0]["at"] == now.isoformat() and history[0]["pass_id"] == 7

    monkeypatch.setattr(runstats, "MAX_DISK_SAMPLES", 3)
    for i in range(5):
        runstats.record_disk_sample(
            api.ctx.db, api.ctx.settings.logs_root, 10 + i, now=now + timedelta(hours=i + 1)
        )
    assert [h["pass_id"] for h in api.get("/api/stats/overview")["disk_history"]] == [12, 13, 14]


def test_every_cleanup_pass_records_a_disk_sample(api: Api) -> None:
    from fastflow.lifecycle.cleanup import run_pass

    seed_run(api.ctx, "etl", utcnow() - timedelta(days=1))
    summary = run_pass(api.ctx, "api")
    history = api.get("/api/stats/overview")["disk_history"]
    assert history and history[-1]["pass_id"] == summary.pass_id
    assert history[-1]["local_log_bytes"] > 0


# --- how the figures are read -------------------------------------------------------------


def test_day_counts_and_a_pipeline_window_read_only_the_index(api: Api) -> None:
    """The figures come from index ranges (SQLite's plan names a covering index), not from
    a scan of the table."""
    plans = []
    with api.ctx.db.engine.connect() as conn:
        for sql in (
            "SELECT count(*) FROM pipeline_runs WHERE status IN ('SUCCESS', 'FAILED') "
            "AND started_at >= '2026-01-01' AND started_at < '2026-01-02' GROUP BY status",
            "SELECT status, started_at, finished_at FROM pipeline_runs "
            "WHERE pipeline_name = 'etl' AND started_at >= '2026-01-01'",
            "SELECT sum(log_size) FROM pipeline_runs WHERE log_file IS NOT NULL",
            "SELECT sum(log_size) FROM pipeline_runs WHERE log_file IS NOT NULL "
            "AND finished_at > '2026-01-01'",
        ):
            plans.append(
                " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            )
    assert "COVERING INDEX ix_pipeline_runs_status_started" in plans[0]
    assert "COVERING INDEX ix_pipeline_runs_pipeline_stats" in plans[1]
    assert "INDEX ix_pipeline_runs_local_log_size" in plans[2]
    assert "INDEX ix_pipeline_runs_local_log_size (finished_at>?)" in plans[3]


# --- the Runs list a bar links to ---------------------------------------------------------


def test_runs_of_one_day_include_those_deleted_by_retention(api: Api) -> None:
    midnight = datetime.combine(utcnow().date(), datetime.min.time(), tzinfo=UTC)
    yesterday = midnight - timedelta(days=1)
    inside = _add(api.ctx, "etl", yesterday + timedelta(hours=3), "FAILED")
    edge = _add(api.ctx, "etl", midnight - timedelta(microseconds=1), "FAILED")
    _add(api.ctx, "etl", midnight, "FAILED")  # today
    _add(api.ctx, "etl", yesterday - timedelta(microseconds=1), "FAILED")  # the day before
    _add(api.ctx, "etl", yesterday + timedelta(hours=4), "SUCCESS")
    gone = uuid.uuid4()
    with api.ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=gone,
                pipeline_name="etl",
                status="FAILED",
                triggered_by="cli",
                started_at=yesterday + timedelta(hours=5),
                bucket="b",
                reason="retention",
                local_deleted_at=midnight,
            )
        )
    rows = runviews.list_views(
        api.ctx, include_archived=True, status="FAILED", day=yesterday.date(), limit=50
    )
    assert [r["id"] for r in rows] == [str(edge), str(gone), str(inside)]
    rows = runviews.list_views(api.ctx, status="FAILED", day=yesterday.date(), limit=50)
    assert [r["id"] for r in rows] == [str(edge), str(inside)]
    counts = api.get("/api/stats/overview")["runs_by_day"][-2]
    assert counts["day"] == yesterday.date().isoformat() and counts["FAILED"] == 2
    assert json.dumps(counts)  # the row the bar of that day and status is drawn from


def test_pages_start_on_the_overview_and_filter_runs_by_day(
    api: Api, make_pipeline: MakePipeline
) -> None:
    """``/`` is the overview (anonymous: the login form, back to ``/``), a login without
    ``next`` lands there; ``/runs?day=`` filters and reports a bad day; an unknown
    pipeline's page is 404."""
    make_pipeline("etl")
    accounts.create_user(api.ctx.db, "ann", "a-long-password", "viewer")
    client = api.client
    anonymous = client.get("/", follow_redirects=False)
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/login?next=/")
    login = client.post(
        "/login",
        data={"username": "ann", "password": "a-long-password"},
        headers={"Origin": str(client.base_url)},
        follow_redirects=False,
    )
    assert (login.status_code, login.headers["location"]) == (303, "/")
    page = client.get("/")
    assert page.status_code == 200 and 'id="overview"' in page.text
    assert '<a href="/" class="on">Overview</a>' in page.text

    midnight = datetime.combine(utcnow().date(), datetime.min.time(), tzinfo=UTC)
    wanted = _add(api.ctx, "etl", midnight - timedelta(hours=2), "FAILED")
    _add(api.ctx, "etl", midnight + timedelta(minutes=1), "FAILED")
    _add(api.ctx, "etl", midnight - timedelta(hours=3), "SUCCESS")
    day = (midnight - timedelta(days=1)).date().isoformat()
    listed = client.get(f"/runs?status=FAILED&day={day}")
    assert listed.status_code == 200
    assert listed.text.count('<tr data-run-id="') == 1 and str(wanted) in listed.text
    assert f'value="{day}"' in listed.text and '<option value="FAILED" selected>' in listed.text
    bad = client.get("/runs?day=2026-13-01")
    assert bad.status_code == 200 and "is not a day: use YYYY-MM-DD (UTC)" in bad.text
    assert bad.text.count('<tr data-run-id="') == 3  # ignored
    last = client.get("/runs?day=9999-12-31")  # was a 500 (outside audit)
    assert last.status_code == 200 and "is out of range" in last.text
    make_pipeline("kept", config='{"retention": {"runs": 1}}')
    _add(api.ctx, "kept", midnight - timedelta(days=3), "SUCCESS")
    _add(api.ctx, "kept", midnight - timedelta(days=2), "FAILED")  # keeps the newest run only
    gone = _add(api.ctx, "kept", midnight - timedelta(days=4), "FAILED")
    page = client.get("/pipelines/kept")
    assert page.status_code == 200
    assert 'data-deletions="1"' in page.text and f'data-run-id="{gone}"' in page.text
    assert "Kept although retention would remove them: 1 (the newest success)." in page.text
    missing = client.get("/pipelines/nope")
    assert missing.status_code == 404 and "pipeline &#39;nope&#39; not found" in missing.text
