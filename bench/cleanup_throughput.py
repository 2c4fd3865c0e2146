"""Cleanup pass throughput against hand-written uploaders that do the same work.

Each round writes ``BENCH_RUNS`` (1,000; 300 with ``BENCH_QUICK=1``) finished runs of
three pipelines (a ~20 KB ``run.log`` and a small ``metrics.jsonl`` each;
``LOG_RETENTION_RUNS=1``, so all but the newest run of each pipeline are archived and
deleted) and archives them three ways, on the same real S3 server (moto, a subprocess on
127.0.0.1), each into its own bucket prefix:

- **fastflow**: one cleanup pass (hash, upload, HEAD-verify, ledger, identity-checked
  delete, row delete);
- **sequential**: per file read + SHA-256 + ``put_object`` (with the SHA-256 for the
  server) + ``head_object`` (size and checksum compared) + ``unlink``, one after another;
- **pool**: the same per file in a 16-thread pool.

Rounds are interleaved A/B/C with rotating order, ``BENCH_REPEAT`` (3) times; runs/s and
client CPU per run are reported as median [min-max] with the load average, and the ratio
fastflow / the better baseline (goal >= 1.0) and fastflow's CPU per run / the sequential
loop's (goal <= 1.5).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
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
RUNS = int(os.environ.get("BENCH_RUNS", "300" if QUICK else "1000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
POOL_THREADS = 16
PIPELINES = ("ingest-orders", "nightly-report", "sync-crm")
FASTFLOW_BUCKET = "bench-fastflow"
NAIVE_BUCKET = "bench-naive"
LOG_LINE_COUNT = 200  # ~20 KB per run.log


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


def _baseline_one(client: Any, bucket: str, key: str, path: Path) -> None:
    """What a careful hand-written uploader does per file: read, hash, put with the hash,
    HEAD and compare, delete."""
    data = path.read_bytes()
    digest = hashlib.sha256(data)
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=b64encode(digest.digest()).decode(),
        Metadata={"sha256": digest.hexdigest()},
    )
    head = client.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != len(data) or head["Metadata"].get("sha256") != digest.hexdigest():
        raise RuntimeError(f"verification failed for {key}")
    path.unlink()


def _baseline(client: Any, root: Path, rows: list[dict[str, Any]], threads: int) -> None:
    keep = {r["pipeline_name"]: r for r in rows}  # the newest run of each pipeline stays
    todo = [
        (root / rel, f"{threads}/{rel}")
        for row in rows
        if keep[row["pipeline_name"]] is not row
        for rel in (row["log_file"], row["metrics_file"])
    ]
    if threads == 1:
        for path, key in todo:
            _baseline_one(client, NAIVE_BUCKET, key, path)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: _baseline_one(client, NAIVE_BUCKET, item[1], item[0]), todo))


def _stats(xs: list[float], fmt: str = ",.1f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main() -> dict[str, Any]:
    now = datetime.now(UTC)
    load_before = os.getloadavg()
    expected = RUNS - len(PIPELINES)
    rates: dict[str, list[float]] = {"fastflow": [], "sequential": [], "pool": []}
    cpu: dict[str, list[float]] = {"fastflow": [], "sequential": [], "pool": []}
    counts_ok = True
    with tempfile.TemporaryDirectory(prefix="ff-bench-cleanup-") as tmp, MotoS3Server() as server:
        top = Path(tmp)
        client = None
        for rnd in range(REPEAT):
            order = ["fastflow", "sequential", "pool"]
            order = order[rnd % 3 :] + order[: rnd % 3]
            for name in order:
                root = top / f"{rnd}-{name}"
                settings = _settings(root, server)
                if client is None:
                    client = make_client(settings)
                    for bucket in (FASTFLOW_BUCKET, NAIVE_BUCKET):
                        client.create_bucket(Bucket=bucket)
                rows = _make_runs(settings.logs_root, RUNS, now)
                if name == "fastflow":
                    settings = settings.model_copy(update={"s3_prefix": f"r{rnd}"})
                    for pipe in PIPELINES:
                        (settings.pipelines_dir / pipe).mkdir(parents=True, exist_ok=True)
                        (settings.pipelines_dir / pipe / "main.py").write_text("print('hi')\n")
                    ctx = bootstrap(settings)
                    with ctx.db.engine.begin() as conn:
                        conn.execute(insert(PipelineRun), rows)
                    t0, c0 = time.perf_counter(), time.process_time()
                    summary = run_pass(ctx, "bench")
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
                    with ctx.db.session() as s:
                        left = s.scalar(select(func.count()).select_from(PipelineRun)) or 0
                        ledger = s.scalar(
                            select(func.count())
                            .select_from(ArchivedRun)
                            .where(ArchivedRun.local_deleted_at.is_not(None))
                        )
                    ctx.db.dispose()
                    counts_ok &= (
                        summary.archived_runs == expected
                        and summary.deleted_runs == expected
                        and summary.backup_failures == 0
                        and left == len(PIPELINES)
                        and ledger == expected
                    )
                else:
                    threads = 1 if name == "sequential" else POOL_THREADS
                    t0, c0 = time.perf_counter(), time.process_time()
                    _baseline(client, settings.logs_root, rows, threads)
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
                rates[name].append(expected / wall)
                cpu[name].append(used / expected * 1000)
    best = max(statistics.median(rates["sequential"]), statistics.median(rates["pool"]))
    ratio = statistics.median(rates["fastflow"]) / best
    cpu_ratio = statistics.median(cpu["fastflow"]) / statistics.median(cpu["sequential"])
    print(
        f"cleanup, {RUNS:,} runs x 2 files (~20 KB log), {REPEAT} interleaved rounds: "
        f"fastflow {_stats(rates['fastflow'])} runs/s, sequential {_stats(rates['sequential'])}"
        f", pool({POOL_THREADS}) {_stats(rates['pool'])}; ratio vs the better baseline "
        f"{ratio:.2f} (goal >= 1.0: {'PASS' if ratio >= 1.0 else 'FAIL'}); client CPU per run "
        f"fastflow {_stats(cpu['fastflow'], '.2f')} ms vs sequential "
        f"{_stats(cpu['sequential'], '.2f')} ms: {cpu_ratio:.2f} (goal <= 1.5: "
        f"{'PASS' if cpu_ratio <= 1.5 else 'FAIL'}); counts {'OK' if counts_ok else 'MISMATCH'}"
        f"; load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return {
        "runs": RUNS,
        "repeat": REPEAT,
        "concurrency": DEFAULT_S3_MAX_CONCURRENCY,
        "rates": rates,
        "cpu_ms_per_run": cpu,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "pass": ratio >= 1.0,
        "cpu_pass": cpu_ratio <= 1.5,
        "counts_ok": counts_ok,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
