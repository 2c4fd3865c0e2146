"""Cleanup planning over many runs: ``selection.deletion_candidates`` and
``truncation_candidates`` for every pipeline, on SQLite and on PostgreSQL.

The table gets ``BENCH_PLAN_RUNS`` rows (default 1,000,000; 50,000 with ``BENCH_QUICK=1``)
over 20 pipelines and 60 days, mostly finished, a few PENDING/RUNNING, 1 in 40 logs over
the 1 MiB limit; policy ``LOG_RETENTION_RUNS=1000``, ``LOG_RETENTION_DAYS=30``,
``LOG_MAX_SIZE_MB=1``. Insert time is not planning time. Planning runs in a fresh child
process that counts the actions (never executes them) and reports its peak RSS growth
during planning (peak reset through ``/proc/self/clear_refs`` before, ``VmHWM`` after).
Baseline: ``SELECT count(*)`` of the same table in the same child. The action counts are
checked against counts computed while generating the rows.

PostgreSQL: a fresh database ``fastflow_bench_<random>`` on ``BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/``), dropped at the end; skipped with a message
when the server is unreachable.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_PLAN_RUNS", "50000" if QUICK else "1000000"))
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
PIPELINES = 20
KEEP_RUNS = 1000
KEEP_DAYS = 30
MAX_LOG_MB = 1
SPAN = timedelta(days=60)
CHUNK = 50_000
BIG_LOG = 2 * 1024 * 1024
CHILD_FLAG = "--child"


# --- data -----------------------------------------------------------------------------------


@dataclass
class Expected:
    deletions: int = 0
    truncations: int = 0
    active: int = 0


def _status(j: int) -> str:
    if j % 4999 == 17:
        return "RUNNING"
    if j % 7919 == 5:
        return "PENDING"
    if j % 13 == 0:
        return "FAILED"
    if j % 97 == 0:
        return "TIMEOUT"
    return "SUCCESS"


def _pipeline_rows(p: int, n: int, now: datetime, exp: Expected) -> Iterator[dict[str, Any]]:
    """Rows of one pipeline, oldest first; updates the expected action counts."""
    name = f"pipeline-{p:02d}"
    step = SPAN / n
    start = now - SPAN + timedelta(milliseconds=p)
    cutoff = now - timedelta(days=KEEP_DAYS)
    statuses = [_status(j) for j in range(n)]
    finished = [j for j, st in enumerate(statuses) if st not in ("PENDING", "RUNNING")]
    boundary = finished[-KEEP_RUNS] if len(finished) > KEEP_RUNS else -1
    for j in range(n):
        run_id = uuid.uuid4()
        started = start + step * j
        status = statuses[j]
        active = status in ("PENDING", "RUNNING")
        log_size = BIG_LOG if j % 40 == 7 else 2_000 + (j * 7919) % 200_000
        if active:
            exp.active += 1
        elif j < boundary or started < cutoff:
            exp.deletions += 1
        elif log_size > MAX_LOG_MB * 1024 * 1024:
            exp.truncations += 1
        yield {
            "id": run_id,
            "pipeline_name": name,
            "status": status,
            "triggered_by": "schedule",
            "started_at": started,
            "finished_at": None if active else started + timedelta(seconds=42),
            "exit_code": None if active else (0 if status == "SUCCESS" else 1),
            "log_file": f"{name}/{run_id}/run.log",
            "metrics_file": f"{name}/{run_id}/metrics.jsonl",
            "log_size": log_size,
            # another host: start-up recovery must not touch the active runs
            "runner_host": "bench-elsewhere" if active else None,
            "runner_pid": 4242 if active else None,
            "runner_started": None,
        }


def _all_rows(n: int, now: datetime, exp: Expected) -> Iterator[dict[str, Any]]:
    for p in range(PIPELINES):
        count = n // PIPELINES + (1 if p < n % PIPELINES else 0)
        yield from _pipeline_rows(p, count, now, exp)


def _settings(url: str, root: Path) -> Any:
    from fastflow.config import load_settings

    return load_settings(
        _env_file=None,
        database_url=url,
        data_dir=root,
        logs_dir=root / "logs",
        pipelines_dir=root / "pipelines",
        log_retention_runs=KEEP_RUNS,
        log_retention_days=KEEP_DAYS,
        log_max_size_mb=MAX_LOG_MB,
        s3_backup_enabled=False,
    )


def _populate(url: str, root: Path, n: int, now: datetime) -> tuple[Expected, float]:
    """Create the schema and insert ``n`` runs in chunks; (expected counts, seconds)."""
    from sqlalchemy import insert, text

    from fastflow.context import bootstrap
    from fastflow.db.models import PipelineRun

    ctx = bootstrap(_settings(url, root))
    exp = Expected()
    t0 = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    for row in _all_rows(n, now, exp):
        chunk.append(row)
        if len(chunk) == CHUNK:
            with ctx.db.engine.begin() as conn:
                conn.execute(insert(PipelineRun), chunk)
            chunk = []
    if chunk:
        with ctx.db.engine.begin() as conn:
            conn.execute(insert(PipelineRun), chunk)
    if ctx.db.engine.dialect.name == "postgresql":
        with ctx.db.engine.begin() as conn:  # what autovacuum does after a bulk load
            conn.execute(text("ANALYZE pipeline_runs"))
    elapsed = time.perf_counter() - t0
    ctx.db.dispose()
    return exp, elapsed


# --- child: the measurement -------------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS: now; VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); return it (KiB).

    ``getrusage``'s ``ru_maxrss`` cannot be reset and, in a child, starts at the parent's
    peak at ``exec`` time, which would hide any growth below it.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _child(url: str, root: str, now_iso: str) -> None:
    from sqlalchemy import text

    from fastflow.context import Context
    from fastflow.db.engine import Database
    from fastflow.lifecycle import selection
    from fastflow.lifecycle.cleanup import run_pass
    from fastflow.lifecycle.policy import ActionKind, policy_for

    now = datetime.fromisoformat(now_iso)
    settings = _settings(url, Path(root))
    db = Database(settings)
    policy = policy_for(settings)

    with db.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM pipeline_runs")).scalar()  # warm up
    count_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with db.engine.connect() as conn:
            total = conn.execute(text("SELECT count(*) FROM pipeline_runs")).scalar_one()
        count_times.append(time.perf_counter() - t0)

    rss_before = _reset_peak()
    counts = {kind.value: 0 for kind in ActionKind}
    t0 = time.perf_counter()
    names = selection.pipeline_names(db)
    for name in names:
        for batch in selection.deletion_candidates(db, name, policy, now):
            for action in batch:
                counts[action.kind.value] += 1
        for batch in selection.truncation_candidates(db, name, policy, now, settings.logs_root):
            for action in batch:
                counts[action.kind.value] += 1
    plan_s = time.perf_counter() - t0
    rss_after = _status_kib("VmHWM")

    # Steady state: the same table, a policy that keeps all but ~50 runs per pipeline (what
    # a nightly pass sees once the backlog is gone). This is index work, not per-row work.
    from fastflow.lifecycle.policy import Policy

    per_pipeline = total // max(1, len(names))
    steady = Policy(keep_runs=max(1, per_pipeline - 50))
    t0 = time.perf_counter()
    steady_actions = 0
    for name in names:
        for batch in selection.deletion_candidates(db, name, steady, now):
            steady_actions += len(batch)
    steady_s = time.perf_counter() - t0

    # For information: the dry-run pass (``fastflow cleanup --dry-run``) plans the same way.
    dry_before = _reset_peak()
    t0 = time.perf_counter()
    dry = run_pass(Context(settings=settings, db=db), "bench", now=now, dry_run=True)
    dry_s = time.perf_counter() - t0
    rss_dry = _status_kib("VmHWM")
    db.dispose()
    print(
        json.dumps(
            {
                "rows": total,
                "pipelines": len(names),
                "count_s": min(count_times),
                "plan_s": plan_s,
                "steady_s": steady_s,
                "steady_actions": steady_actions,
                "counts": counts,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "dry_run_s": dry_s,
                "dry_run_planned": dry.planned_runs + dry.planned_truncations,
                "rss_dry_before_kib": dry_before,
                "rss_dry_kib": rss_dry,
            }
        )
    )


def _run_child(url: str, root: Path, now: datetime) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            CHILD_FLAG,
            url,
            str(root),
            now.isoformat(),
        ],
        env=env,
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"planning child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- parent ---------------------------------------------------------------------------------


def _measure(label: str, url: str, root: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    exp, insert_s = _populate(url, root, RUNS, now)
    rep = _run_child(url, root, now)
    deletions = rep["counts"]["archive_and_delete_run"]
    truncations = rep["counts"]["truncate_log"]
    ok = deletions == exp.deletions and truncations == exp.truncations and rep["rows"] == RUNS
    growth_mib = (rep["rss_after_kib"] - rep["rss_before_kib"]) / 1024
    dry_growth_mib = (rep["rss_dry_kib"] - rep["rss_dry_before_kib"]) / 1024
    per_million = rep["plan_s"] * 1_000_000 / RUNS
    ratio = rep["plan_s"] / rep["count_s"] if rep["count_s"] > 0 else float("inf")
    print(
        f"planning on {label}, {RUNS:,} runs / {rep['pipelines']} pipelines (inserted in "
        f"{insert_s:.1f} s, not counted): plan {rep['plan_s']:.2f} s ({per_million:.2f} s per "
        f"1M runs), SELECT count(*) {rep['count_s'] * 1000:.1f} ms, ratio {ratio:,.0f}x; "
        f"{deletions:,} deletions + {truncations:,} truncations "
        f"(expected {exp.deletions:,} + {exp.truncations:,}: {'OK' if ok else 'MISMATCH'}); "
        f"peak RSS growth while planning {growth_mib:+.1f} MiB (process peak "
        f"{rep['rss_after_kib'] / 1024:.0f} MiB); dry-run pass {rep['dry_run_s']:.2f} s, "
        f"its peak RSS growth {dry_growth_mib:+.1f} MiB; steady state (~50 candidates per "
        f"pipeline) {rep['steady_s']:.2f} s for {rep['steady_actions']:,} actions"
    )
    return {
        "runs": RUNS,
        "insert_s": insert_s,
        "plan_s": float(rep["plan_s"]),
        "steady_s": float(rep["steady_s"]),
        "steady_actions": int(rep["steady_actions"]),
        "plan_s_per_million": per_million,
        "count_s": rep["count_s"],
        "ratio_vs_count": ratio,
        "deletions": deletions,
        "truncations": truncations,
        "expected_deletions": exp.deletions,
        "expected_truncations": exp.truncations,
        "counts_ok": ok,
        "rss_growth_mib": growth_mib,
        "peak_rss_mib": rep["rss_after_kib"] / 1024,
        "dry_run_s": rep["dry_run_s"],
        "dry_run_rss_growth_mib": dry_growth_mib,
    }


def _pg_bench(root: Path) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    name = f"fastflow_bench_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        msg = f"skipped: PostgreSQL unreachable at {PG_ADMIN_URL} ({str(e).strip()[:200]})"
        print(f"planning on PostgreSQL: {msg}")
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
    results: dict[str, Any] = {"runs": RUNS}
    with tempfile.TemporaryDirectory(prefix="ff-bench-plan-") as tmp:
        root = Path(tmp)
        sqlite_root = root / "sqlite"
        sqlite_root.mkdir()
        results["sqlite"] = _measure("SQLite", f"sqlite:///{sqlite_root / 'ff.db'}", sqlite_root)
        pg_root = root / "pg"
        pg_root.mkdir()
        results["postgresql"] = _pg_bench(pg_root)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == CHILD_FLAG:
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
