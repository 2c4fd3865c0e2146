"""Cleanup planning over many runs: ``selection.deletion_candidates`` and
``truncation_candidates`` for every pipeline, on SQLite and on PostgreSQL.

The table gets ``BENCH_PLAN_RUNS`` rows (default 1,000,000; 50,000 with ``BENCH_QUICK=1``)
over 20 pipelines and 60 days, mostly finished, a few PENDING/RUNNING, 1 in 40 logs over
the 1 MiB limit; policy ``LOG_RETENTION_RUNS=1000``, ``LOG_RETENTION_DAYS=30``,
``LOG_MAX_SIZE_MB=1``. Insert time is not planning time. Planning runs in a fresh child
process that counts the actions (never executes them) and reports its peak RSS growth
during planning (peak reset through ``/proc/self/clear_refs`` before, ``VmHWM`` after).
Baseline: ``HandPlanner``, a hand-written DB-API planner with the same rules and the same
output (the ids of the runs to delete and to truncate), in the same child, A/B/A/B with
rotating order. Both outputs are compared through an order-insensitive digest of the
ids, each side computing it from its own representation (hex text for the hand-written
planner, the ``UUID``'s integer for fastflow), and the action counts are checked against
counts computed while generating the rows.

PostgreSQL: a fresh database ``fastflow_bench_<random>`` on ``BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/``), dropped at the end; skipped with a message
when the server is unreachable.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
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
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from goals import goal  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_PLAN_RUNS", "50000" if QUICK else "200000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
GOAL_RATIO = 2.0  # issue 14: at most twice the hand-written planner's time
GOAL_RSS_MIB = 40
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


_ACTIVE = "('PENDING', 'RUNNING', 'QUEUED')"


def _digest(ids: Iterator[str]) -> int:
    """An order-insensitive digest of run ids (hex), to compare two planners' output."""
    return sum(int(i[:15], 16) for i in ids) % (1 << 64)


class HandPlanner:
    """What a careful developer writes without fastflow: the same rules (count boundary,
    age cut-off, newest SUCCESS kept, no pinned or active run, oversized logs of kept runs
    truncated) over the DB-API cursor, keyset pages of 1,000, plain tuples."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            import sqlite3

            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        else:
            import psycopg

            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.ph = "?" if self.sqlite else "%s"

    def close(self) -> None:
        self.conn.close()

    def _q(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        cur.execute(sql.replace("?", self.ph), args)
        rows: list[tuple[Any, ...]] = cur.fetchall()
        cur.close()
        return rows

    def _pages(self, where: str, args: tuple[Any, ...]) -> Iterator[list[tuple[Any, ...]]]:
        cursor: tuple[Any, Any] | None = None
        while True:
            extra, more = ("", ()) if cursor is None else (" AND (started_at, id) > (?, ?)", cursor)
            rows = self._q(
                "SELECT id, started_at, log_size FROM pipeline_runs WHERE "
                f"{where}{extra} ORDER BY started_at, id LIMIT 1000",
                args + more,
            )
            if not rows:
                return
            yield rows
            cursor = (rows[-1][1], rows[-1][0])
            if len(rows) < 1000:
                return

    def plan(self, now: datetime, keep: int, days: int, max_bytes: int) -> dict[str, Any]:
        cutoff: Any = (now - timedelta(days=days)).replace(tzinfo=None)
        if self.sqlite:
            cutoff = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
        names = [r[0] for r in self._q("SELECT DISTINCT pipeline_name FROM pipeline_runs", ())]
        deletions = truncations = 0
        digest = 0
        for name in names:
            finished = f"pipeline_name = ? AND status NOT IN {_ACTIVE}"
            b = self._q(
                f"SELECT started_at, id FROM pipeline_runs WHERE {finished} "
                "ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET ?",
                (name, keep - 1),
            )
            last = self._q(
                "SELECT id FROM pipeline_runs WHERE pipeline_name = ? AND status = 'SUCCESS' "
                "ORDER BY started_at DESC, id DESC LIMIT 1",
                (name,),
            )
            last_id = last[0][0] if last else None
            bound = b[0] if b else None
            due = "started_at < ?" + (" OR (started_at, id) < (?, ?)" if bound else "")
            due_args: tuple[Any, ...] = (cutoff, *bound) if bound else (cutoff,)
            spare = " AND id <> ?" if last_id is not None else ""
            spare_args: tuple[Any, ...] = (last_id,) if last_id is not None else ()
            where = f"{finished} AND pinned_at IS NULL AND ({due}){spare}"
            for rows in self._pages(where, (name, *due_args, *spare_args)):
                deletions += len(rows)
                digest += sum(int(str(r[0]).replace("-", "")[:15], 16) for r in rows)
            kept = "started_at >= ?" + (" AND (started_at, id) >= (?, ?)" if bound else "")
            oversized = (
                f"{finished} AND pinned_at IS NULL AND log_file IS NOT NULL "
                "AND (log_size > ? OR log_size IS NULL)"
            )
            for rows in self._pages(f"{oversized} AND {kept}", (name, max_bytes, *due_args)):
                truncations += len(rows)
                digest += sum(int(str(r[0]).replace("-", "")[:15], 16) for r in rows)
            if last_id is not None:  # the newest SUCCESS, kept by the rule: still truncated
                rows = self._q(
                    f"SELECT id FROM pipeline_runs WHERE id = ? AND {oversized} AND ({due})",
                    (last_id, name, max_bytes, *due_args),
                )
                truncations += len(rows)
                digest += sum(int(str(r[0]).replace("-", "")[:15], 16) for r in rows)
        return {"deletions": deletions, "truncations": truncations, "digest": digest % (1 << 64)}


def _fastflow_plan(db: Any, settings: Any, policy: Any, now: datetime) -> dict[str, Any]:
    from fastflow.lifecycle import selection
    from fastflow.lifecycle.policy import ActionKind

    deletions = truncations = 0
    digest = 0
    for name in selection.pipeline_names(db):
        for batch in selection.deletion_candidates(db, name, policy, now):
            deletions += sum(a.kind is ActionKind.ARCHIVE_AND_DELETE_RUN for a in batch)
            digest += sum(a.run.id.int >> 68 for a in batch)  # its first 15 hex digits
        for batch in selection.truncation_candidates(db, name, policy, now, settings.logs_root):
            truncations += sum(a.kind is ActionKind.TRUNCATE_LOG for a in batch)
            digest += sum(a.run.id.int >> 68 for a in batch)
    return {"deletions": deletions, "truncations": truncations, "digest": digest % (1 << 64)}


def _child(url: str, root: str, now_iso: str) -> None:
    from sqlalchemy import text

    from fastflow.context import Context
    from fastflow.db.engine import Database
    from fastflow.lifecycle import selection
    from fastflow.lifecycle.cleanup import run_pass
    from fastflow.lifecycle.policy import policy_for

    now = datetime.fromisoformat(now_iso)
    settings = _settings(url, Path(root))
    db = Database(settings)
    policy = policy_for(settings)
    hand = HandPlanner(settings.database_url)

    with db.engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM pipeline_runs")).scalar_one()
    # warm both (page cache, statement caches), then A/B/A/B with rotating order
    _fastflow_plan(db, settings, policy, now)
    hand.plan(now, KEEP_RUNS, KEEP_DAYS, MAX_LOG_MB << 20)
    times: dict[str, list[float]] = {"fastflow": [], "hand": []}
    growth: dict[str, list[float]] = {"fastflow": [], "hand": []}
    outputs: dict[str, dict[str, Any]] = {}
    for rnd in range(REPEAT):
        order = ["fastflow", "hand"] if rnd % 2 == 0 else ["hand", "fastflow"]
        for name in order:
            before = _reset_peak()
            t0 = time.perf_counter()
            if name == "fastflow":
                out = _fastflow_plan(db, settings, policy, now)
            else:
                out = hand.plan(now, KEEP_RUNS, KEEP_DAYS, MAX_LOG_MB << 20)
            times[name].append(time.perf_counter() - t0)
            growth[name].append((_status_kib("VmHWM") - before) / 1024)
            outputs[name] = out
    hand.close()

    # Steady state: the same table, a policy that keeps all but ~50 runs per pipeline (what
    # a nightly pass sees once the backlog is gone). This is index work, not per-row work.
    from fastflow.lifecycle.policy import Policy

    names = selection.pipeline_names(db)
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
                "times": times,
                "rss_growth_mib": growth,
                "outputs": outputs,
                "same_output": outputs["fastflow"] == outputs["hand"],
                "steady_s": steady_s,
                "steady_actions": steady_actions,
                "dry_run_s": dry_s,
                "dry_run_planned": dry.planned_runs + dry.planned_truncations,
                "dry_run_rss_growth_mib": (rss_dry - dry_before) / 1024,
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


def _spread(xs: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def _measure(label: str, url: str, root: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    exp, insert_s = _populate(url, root, RUNS, now)
    rep = _run_child(url, root, now)
    out = rep["outputs"]["fastflow"]
    ok = (
        out["deletions"] == exp.deletions
        and out["truncations"] == exp.truncations
        and rep["rows"] == RUNS
        and rep["same_output"]
    )
    t, g = rep["times"], rep["rss_growth_mib"]
    ratios = [f / h for f, h in zip(t["fastflow"], t["hand"], strict=True)]
    print(
        f"planning on {label}, {RUNS:,} runs / {rep['pipelines']} pipelines (inserted in "
        f"{insert_s:.1f} s, not counted), {REPEAT} interleaved rounds: fastflow "
        f"{_spread(t['fastflow'])} s, hand-written DB-API planner {_spread(t['hand'])} s, "
        f"ratio {_spread(ratios)} (goal <= {GOAL_RATIO:g}); peak RSS growth fastflow "
        f"{_spread(g['fastflow'], '+.1f')} MiB, hand {_spread(g['hand'], '+.1f')} MiB (goal "
        f"<= {GOAL_RSS_MIB} MiB); {out['deletions']:,} deletions + {out['truncations']:,} "
        f"truncations (expected {exp.deletions:,} + {exp.truncations:,}, same ids as the "
        f"hand-written planner: {'OK' if ok else 'MISMATCH'}); dry-run pass "
        f"{rep['dry_run_s']:.2f} s; steady state (~50 candidates per pipeline) "
        f"{rep['steady_s']:.2f} s for {rep['steady_actions']:,} actions"
    )
    return {
        "runs": RUNS,
        "insert_s": insert_s,
        "times": t,
        "ratio": ratios,
        "rss_growth_mib": g,
        "deletions": out["deletions"],
        "truncations": out["truncations"],
        "expected_deletions": exp.deletions,
        "expected_truncations": exp.truncations,
        "counts_ok": ok,
        "steady_s": float(rep["steady_s"]),
        "steady_actions": int(rep["steady_actions"]),
        "dry_run_s": rep["dry_run_s"],
        "dry_run_rss_growth_mib": rep["dry_run_rss_growth_mib"],
        "goals": [
            goal(
                f"planning {RUNS:,} runs on {label}: time vs hand-written planner",
                ratios,
                "<=",
                GOAL_RATIO,
            ),
            goal(
                f"planning {RUNS:,} runs on {label}: peak RSS growth",
                g["fastflow"],
                "<=",
                GOAL_RSS_MIB,
                "MiB",
            ),
        ],
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
    results: dict[str, Any] = {"runs": RUNS, "goals": []}
    with tempfile.TemporaryDirectory(prefix="ff-bench-plan-") as tmp:
        root = Path(tmp)
        sqlite_root = root / "sqlite"
        sqlite_root.mkdir()
        results["sqlite"] = _measure("SQLite", f"sqlite:///{sqlite_root / 'ff.db'}", sqlite_root)
        pg_root = root / "pg"
        pg_root.mkdir()
        results["postgresql"] = _pg_bench(pg_root)
    for key in ("sqlite", "postgresql"):
        results["goals"] += results[key].get("goals", [])
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == CHILD_FLAG:
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
