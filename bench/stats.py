"""The dashboards' routes on a big table: ``GET /api/stats/overview?days=14`` and
``GET /api/pipelines/{name}/stats?days=30`` against a plain ``GROUP BY`` over the table.

The table gets ``BENCH_STATS_RUNS`` rows (default 1,000,000; 50,000 with
``BENCH_QUICK=1``) over 50 pipelines and ``BENCH_STATS_DAYS`` days (default 365: about
2,700 runs a day), 88 % SUCCESS, 7 % FAILED (half of them retried once), 3 % TIMEOUT,
2 % CANCELLED, durations of 1 s to 10 min, a few runs still active. The retention is
``LOG_RETENTION_DAYS`` = days - 1, so that a day of runs waits for the next pass (the
steady state just before the nightly pass). Every pipeline has a folder with a schedule.

Each route is called through the real app (``TestClient``, an API token) with the
one-second read cache dropped before every call, so that every call computes. Baseline:
``SELECT date(started_at), status, count(*) FROM pipeline_runs GROUP BY 1, 2`` — the
figures the charts draw, computed the plain way. A/B interleaved: each repeat times the
overview, the baseline and the pipeline route in turn; 7 repeats after 2 warm-up rounds;
median [min-max] and the ratio of the medians (route / baseline; below 1: faster than
the plain aggregate). Goal: both routes under 100 ms.

PostgreSQL: a fresh database ``fastflow_bench_<random>`` on ``BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/``), vacuumed and analysed after the load (what
autovacuum does), dropped at the end; skipped with a message when unreachable.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_STATS_RUNS", "50000" if QUICK else "1000000"))
DAYS = int(os.environ.get("BENCH_STATS_DAYS", "365"))
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
PIPELINES = 50
CHUNK = 50_000
REPEATS = 7
WARMUP = 2
GOAL_MS = 100.0


def _rows(n: int, now: datetime) -> Iterator[dict[str, Any]]:
    """``n`` runs over ``DAYS`` days, newest ~1 minute ago; some still active."""
    rnd = random.Random(18)
    span = timedelta(days=DAYS).total_seconds()
    for i in range(n):
        name = f"pipeline-{i % PIPELINES:02d}"
        started = now - timedelta(seconds=span * (n - i) / n + 60)
        roll = rnd.random()
        status = (
            "SUCCESS"
            if roll < 0.88
            else "FAILED"
            if roll < 0.95
            else "TIMEOUT"
            if roll < 0.98
            else "CANCELLED"
        )
        if i >= n - 20:
            status = ("RUNNING", "QUEUED", "PENDING")[i % 3]
        active = status in ("RUNNING", "QUEUED", "PENDING")
        run_id = uuid.uuid4()
        yield {
            "id": run_id,
            "pipeline_name": name,
            "status": status,
            "triggered_by": "schedule",
            "started_at": started,
            "finished_at": None if active else started + timedelta(seconds=rnd.randint(1, 600)),
            "exit_code": None if active else (0 if status == "SUCCESS" else 1),
            "log_file": f"{name}/{run_id}/run.log",
            "metrics_file": f"{name}/{run_id}/metrics.jsonl",
            "log_size": rnd.randint(2_000, 400_000),
            "attempt": 2 if status == "FAILED" and roll < 0.915 else 1,
            "runner_host": "bench-elsewhere" if active else None,
        }


def _settings(url: str, root: Path) -> Any:
    from fastflow.config import load_settings

    return load_settings(
        _env_file=None,
        database_url=url,
        data_dir=root,
        logs_dir=root / "logs",
        pipelines_dir=root / "pipelines",
        log_retention_days=DAYS - 1,
        s3_backup_enabled=False,
    )


def _pipelines(root: Path) -> None:
    for p in range(PIPELINES):
        folder = root / "pipelines" / f"pipeline-{p:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "main.py").write_text("print('ok')\n")
        schedule = {"schedules": [{"cron": f"{p % 60} * * * *"}]}
        (folder / "pipeline.json").write_text(json.dumps(schedule))


def _populate(url: str, root: Path, now: datetime) -> float:
    from sqlalchemy import insert, text

    from fastflow.context import bootstrap
    from fastflow.db.models import PipelineRun

    _pipelines(root)
    ctx = bootstrap(_settings(url, root), recover=False)
    t0 = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    for row in _rows(RUNS, now):
        chunk.append(row)
        if len(chunk) == CHUNK:
            with ctx.db.engine.begin() as conn:
                conn.execute(insert(PipelineRun), chunk)
            chunk = []
    if chunk:
        with ctx.db.engine.begin() as conn:
            conn.execute(insert(PipelineRun), chunk)
    if ctx.db.engine.dialect.name == "postgresql":
        with ctx.db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE pipeline_runs")
            )
    else:
        with ctx.db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    elapsed = time.perf_counter() - t0
    ctx.db.dispose()
    return elapsed


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(xs), "min_ms": min(xs), "max_ms": max(xs)}


def _measure(label: str, url: str, root: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from fastflow import accounts
    from fastflow.context import bootstrap
    from fastflow.db import cache as readcache
    from fastflow.db.models import PipelineRun
    from fastflow.server import create_app

    now = datetime.now(UTC)
    insert_s = _populate(url, root, now)
    ctx = bootstrap(_settings(url, root), recover=False)
    client = TestClient(create_app(ctx, schedule=False))
    headers = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'bench', 'viewer')}"}
    baseline_q = select(
        func.date(PipelineRun.started_at), PipelineRun.status, func.count()
    ).group_by(func.date(PipelineRun.started_at), PipelineRun.status)

    def route(path: str) -> Callable[[], Any]:
        def call() -> Any:
            readcache.invalidate()
            res = client.get(path, headers=headers)
            res.raise_for_status()
            return res.json()

        return call

    def baseline() -> Any:
        with ctx.db.engine.connect() as conn:
            return conn.execute(baseline_q).all()

    cases: dict[str, Callable[[], Any]] = {
        "overview": route("/api/stats/overview?days=14"),
        "baseline": baseline,
        "pipeline": route("/api/pipelines/pipeline-07/stats?days=30"),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    last: dict[str, Any] = {}
    for i in range(WARMUP + REPEATS):
        for key, fn in cases.items():
            t0 = time.perf_counter()
            last[key] = fn()
            ms = (time.perf_counter() - t0) * 1000
            if i >= WARMUP:
                times[key].append(ms)
    ctx.db.dispose()
    over, pipe, base = (_spread(times[k]) for k in ("overview", "pipeline", "baseline"))
    result = {
        "runs": RUNS,
        "days": DAYS,
        "insert_s": insert_s,
        "overview": over,
        "pipeline": pipe,
        "baseline": base,
        "overview_ratio": over["median_ms"] / base["median_ms"],
        "pipeline_ratio": pipe["median_ms"] / base["median_ms"],
        "backlog_runs": last["overview"]["disk"]["backlog_runs"],
        "runs_14d": sum(
            sum(v for k, v in d.items() if k != "day") for d in last["overview"]["runs_by_day"]
        ),
        "pipeline_runs_30d": last["pipeline"]["runs"],
        "goal_ok": over["median_ms"] < GOAL_MS and pipe["median_ms"] < GOAL_MS,
        "load": os.getloadavg(),
    }

    def fmt(s: dict[str, float]) -> str:
        return f"{s['median_ms']:.1f} ms [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"

    print(
        f"stats on {label}, {RUNS:,} runs over {DAYS} days (inserted in {insert_s:.0f} s, not "
        f"counted): overview {fmt(over)} ({result['runs_14d']:,} runs in 14 days, backlog "
        f"{result['backlog_runs']:,}), pipeline {fmt(pipe)} ({result['pipeline_runs_30d']:,} "
        f"runs in 30 days), plain GROUP BY {fmt(base)}; ratios {result['overview_ratio']:.3f} "
        f"/ {result['pipeline_ratio']:.3f}; goal < {GOAL_MS:.0f} ms: "
        f"{'PASS' if result['goal_ok'] else 'FAIL'}; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    return result


def _pg_bench(root: Path) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    name = f"fastflow_bench_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        msg = f"skipped: PostgreSQL unreachable at {PG_ADMIN_URL} ({str(e).strip()[:200]})"
        print(f"stats on PostgreSQL: {msg}")
        return {"skipped": msg}
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
        return _measure("PostgreSQL", url, root)
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"runs": RUNS, "days": DAYS}
    with tempfile.TemporaryDirectory(prefix="ff-bench-stats-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        results["sqlite"] = _measure(
            "SQLite", f"sqlite:///{root / 'sqlite' / 'ff.db'}", root / "sqlite"
        )
        (root / "pg").mkdir()
        results["postgresql"] = _pg_bench(root / "pg")
    return results


if __name__ == "__main__":
    main()
