"""Cleanup pass throughput: archive + verify + delete N finished runs against a real S3
server (moto, subprocess on 127.0.0.1), versus a naive sequential ``upload_file`` loop
over an identical second set of files (same server, same run, another bucket). For
reading the ratio, a sequential ``head_object`` per naive object is timed as well (the
pass verifies every upload with a HEAD).

Each run has a ~2 KB ``run.log`` and a small ``metrics.jsonl``; ``LOG_RETENTION_RUNS=1``
so every run but the newest of each pipeline is archived and deleted. Prints runs/s for
both and the ratio fastflow/naive (> 1: the pass is faster than the naive loop although
it also verifies, records and deletes). Sizes: ``BENCH_RUNS`` (default 2000; 300 with
``BENCH_QUICK=1``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import func, insert, select  # noqa: E402
from tests.harness.s3server import MotoS3Server  # noqa: E402

from fastflow.archive.s3 import make_client  # noqa: E402
from fastflow.config import DEFAULT_S3_MAX_CONCURRENCY, Settings, load_settings  # noqa: E402
from fastflow.context import bootstrap  # noqa: E402
from fastflow.db.models import ArchivedRun, PipelineRun  # noqa: E402
from fastflow.lifecycle.cleanup import run_pass  # noqa: E402
from fastflow.runs import files as logfiles  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_RUNS", "300" if QUICK else "2000"))
PIPELINES = ("ingest-orders", "nightly-report", "sync-crm")
FASTFLOW_BUCKET = "bench-fastflow"
NAIVE_BUCKET = "bench-naive"
LOG_LINE_COUNT = 24  # ~2 KB per run.log


def _log_text(pipeline: str, run_id: str, start: datetime) -> str:
    lines = []
    for i in range(LOG_LINE_COUNT):
        ts = (start + timedelta(milliseconds=137 * i)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        level = "WARNING" if i % 11 == 5 else "INFO"
        lines.append(
            f"[{ts}] [{level}] {pipeline} run {run_id[:8]}: step {i + 1}/{LOG_LINE_COUNT} "
            f"processed {1000 + 37 * i} records in {0.01 * (i % 7):.3f} s"
        )
    return "\n".join(lines) + "\n"


def _metrics_text(start: datetime) -> str:
    rows = []
    for i in range(3):
        ts = (start + timedelta(seconds=i)).isoformat()
        rows.append(f'{{"ts": "{ts}", "cpu_percent": {12.5 + i}, "rss_bytes": {41_000_000 + i}}}')
    return "\n".join(rows) + "\n"


def _make_runs(logs_root: Path, n: int, now: datetime) -> list[dict[str, Any]]:
    """Write the files of ``n`` finished runs; return their ``pipeline_runs`` rows."""
    rows: list[dict[str, Any]] = []
    base = now - timedelta(days=2)
    for i in range(n):
        pipeline = PIPELINES[i % len(PIPELINES)]
        run_id = str(uuid.uuid4())
        started = base + timedelta(seconds=30 * i)
        log_rel = logfiles.log_rel(pipeline, run_id)
        metrics_rel = logfiles.metrics_rel(pipeline, run_id)
        folder = logs_root / pipeline / run_id
        folder.mkdir(parents=True)
        log_bytes = _log_text(pipeline, run_id, started).encode()
        (logs_root / log_rel).write_bytes(log_bytes)
        (logs_root / metrics_rel).write_text(_metrics_text(started))
        failed = i % 17 == 3
        rows.append(
            {
                "id": uuid.UUID(run_id),
                "pipeline_name": pipeline,
                "status": "FAILED" if failed else "SUCCESS",
                "triggered_by": "schedule",
                "started_at": started,
                "finished_at": started + timedelta(seconds=4),
                "exit_code": 1 if failed else 0,
                "log_file": log_rel,
                "metrics_file": metrics_rel,
                "log_size": len(log_bytes),
                "runner_host": "bench-host",
                "runner_pid": 1,
                "runner_started": None,
            }
        )
    return rows


def _copy_tree_files(rows: list[dict[str, Any]], src_root: Path, dst_root: Path) -> None:
    for row in rows:
        for rel in (row["log_file"], row["metrics_file"]):
            dst = dst_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((src_root / rel).read_bytes())


def _count_objects(client: Any, bucket: str) -> int:
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += int(page.get("KeyCount", 0))
    return total


def _settings(root: Path, server: MotoS3Server) -> Settings:
    return load_settings(
        _env_file=None,
        database_url=f"sqlite:///{root / 'ff.db'}",
        data_dir=root,
        logs_dir=root / "logs",
        pipelines_dir=root / "pipelines",
        log_retention_runs=1,
        log_retention_days=None,
        log_max_size_mb=None,
        s3_backup_enabled=True,
        s3_endpoint_url=server.url,
        s3_bucket=FASTFLOW_BUCKET,
        s3_access_key=server.access_key,
        s3_secret_access_key=server.secret_key,
        s3_region=server.region,
        s3_max_concurrency=DEFAULT_S3_MAX_CONCURRENCY,
    )


def main() -> dict[str, Any]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ff-bench-cleanup-") as tmp, MotoS3Server() as server:
        root = Path(tmp)
        settings = _settings(root, server)
        for name in PIPELINES:
            (settings.pipelines_dir / name).mkdir(parents=True)
            (settings.pipelines_dir / name / "main.py").write_text("print('hi')\n")
        rows = _make_runs(settings.logs_root, RUNS, now)
        naive_root = root / "naive-logs"
        _copy_tree_files(rows, settings.logs_root, naive_root)

        client = make_client(settings)
        for bucket in (FASTFLOW_BUCKET, NAIVE_BUCKET):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=NAIVE_BUCKET, Key="warm-up", Body=b"x")  # moto's lazy imports
        client.delete_object(Bucket=NAIVE_BUCKET, Key="warm-up")

        ctx = bootstrap(settings)
        with ctx.db.engine.begin() as conn:
            conn.execute(insert(PipelineRun), rows)

        # Baseline: per file, one upload_file call, sequentially, nothing else.
        t0 = time.perf_counter()
        for row in rows:
            for rel in (row["log_file"], row["metrics_file"]):
                client.upload_file(str(naive_root / rel), NAIVE_BUCKET, f"naive/{rel}")
        naive_s = time.perf_counter() - t0
        # For reading the ratio: what fastflow's HEAD-after-PUT verification adds to it.
        t0 = time.perf_counter()
        for row in rows:
            for rel in (row["log_file"], row["metrics_file"]):
                client.head_object(Bucket=NAIVE_BUCKET, Key=f"naive/{rel}")
        naive_head_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        summary = run_pass(ctx, "bench")
        fastflow_s = time.perf_counter() - t0

        expected = RUNS - len(PIPELINES)  # LOG_RETENTION_RUNS=1 keeps one run per pipeline
        with ctx.db.session() as s:
            rows_left = s.scalar(select(func.count()).select_from(PipelineRun)) or 0
            ledger = s.scalar(
                select(func.count())
                .select_from(ArchivedRun)
                .where(ArchivedRun.local_deleted_at.is_not(None))
            )
        files_left = sum(1 for p in settings.logs_root.rglob("*") if p.is_file())
        objects = _count_objects(client, FASTFLOW_BUCKET)
        naive_objects = _count_objects(client, NAIVE_BUCKET)
        ctx.db.dispose()

    naive_rate = RUNS / naive_s
    fastflow_rate = summary.archived_runs / fastflow_s if fastflow_s > 0 else 0.0
    ratio = fastflow_rate / naive_rate
    verified_rate = RUNS / (naive_s + naive_head_s)
    counts_ok = (
        summary.archived_runs == expected
        and summary.deleted_runs == expected
        and summary.deleted_logs == expected
        and summary.deleted_metrics == expected
        and summary.backup_failures == 0
        and rows_left == len(PIPELINES)
        and ledger == expected
        and objects == 2 * expected
        and files_left == 2 * len(PIPELINES)
        and naive_objects == 2 * RUNS
    )
    print(
        f"cleanup pass, {RUNS:,} runs x 2 files (~2 KB log), S3_MAX_CONCURRENCY="
        f"{settings.s3_max_concurrency}: fastflow {fastflow_rate:,.0f} runs/s ({fastflow_s:.2f} s)"
        f", naive sequential upload_file {naive_rate:,.0f} runs/s ({naive_s:.2f} s); "
        f"ratio {ratio:.2f} (naive upload_file + head_object {verified_rate:,.0f} runs/s, "
        f"ratio {fastflow_rate / verified_rate:.2f}); archived {summary.archived_runs}, "
        f"deleted runs {summary.deleted_runs}/logs {summary.deleted_logs}/metrics "
        f"{summary.deleted_metrics}, "
        f"failures {summary.backup_failures}, objects {objects}, rows left {rows_left}, "
        f"files left {files_left} (expected {expected} archived: "
        f"{'OK' if counts_ok else 'MISMATCH'})"
    )
    return {
        "runs": RUNS,
        "expected_archived": expected,
        "concurrency": settings.s3_max_concurrency,
        "fastflow_s": fastflow_s,
        "naive_s": naive_s,
        "fastflow_runs_per_s": fastflow_rate,
        "naive_runs_per_s": naive_rate,
        "ratio": ratio,
        "naive_head_s": naive_head_s,
        "naive_verified_runs_per_s": verified_rate,
        "ratio_vs_verified": fastflow_rate / verified_rate,
        "archived_runs": summary.archived_runs,
        "deleted_runs": summary.deleted_runs,
        "deleted_logs": summary.deleted_logs,
        "deleted_metrics": summary.deleted_metrics,
        "backup_failures": summary.backup_failures,
        "skipped_runs": summary.skipped_runs,
        "objects": objects,
        "rows_left": rows_left,
        "files_left": files_left,
        "counts_ok": counts_ok,
    }


if __name__ == "__main__":
    main()
