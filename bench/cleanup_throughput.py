"""Cleanup pass throughput against hand-written uploaders that do the same work.

Each round writes ``BENCH_RUNS`` (1,000; 300 with ``BENCH_QUICK=1``) finished runs of
three pipelines (a ~20 KB ``run.log`` and a small ``metrics.jsonl`` each;
``LOG_RETENTION_RUNS=1``, so all but the newest run of each pipeline are archived and
deleted) and archives them three ways, on the same real S3 server (moto, a subprocess on
127.0.0.1), each into its own bucket prefix:

- **fastflow**: one cleanup pass (hash, upload, verify — a HEAD for the pass's first
  object, the PutObject's MD5 ETag for the others —, ledger, identity-checked delete,
  row delete);
- **sequential**: per file read + SHA-256 + ``put_object`` (with the SHA-256 for the
  server) + ``head_object`` (size and checksum compared) + ``unlink``, one after another;
- **pool**: the same per file in a 16-thread pool;
- **pool_etag** (small runs only, not a goal's baseline): the pool verifying each file by
  the PutObject answer's ETag (the MD5 of the bytes sent) instead of a HEAD — the same
  verification fastflow makes after its first object, so the share of fastflow's ratio
  that is the HEAD it leaves out shows.

Rounds are interleaved A/B/C with rotating order, ``BENCH_REPEAT`` (3) times; runs/s and
client CPU per run are reported as median [min-max] with the load average, and the ratio
fastflow / the better baseline (goal >= 1.0) and fastflow's CPU per run / the sequential
loop's (goal <= 1.5). Everything is measured on two S3 servers (``BENCH_S3_SERVERS``,
default ``moto,s3rver``; s3rver is installed from npm on first use) and for two sizes:
``BENCH_RUNS`` small runs and ``BENCH_LARGE_RUNS`` (21; 5 quick) runs with logs of
``BENCH_LARGE_MB`` (50; 10 quick) MB, where the baselines go by ``upload_file``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from goals import goal  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402
from tests.harness.s3rver import S3rverServer  # noqa: E402
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
LARGE_RUNS = int(os.environ.get("BENCH_LARGE_RUNS", "5" if QUICK else "21"))  # 20 due
LARGE_MB = int(os.environ.get("BENCH_LARGE_MB", "10" if QUICK else "50"))
LARGE_THRESHOLD = 8 << 20  # boto3's multipart threshold: bigger files go by upload_file


BASELINE_FAILURES: list[str] = []  # verification failures of the hand-written uploaders


class Server(Protocol):
    url: str
    access_key: str
    secret_key: str
    region: str


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


def _make_runs(
    logs_root: Path, n: int, now: datetime, size: int | None = None
) -> list[dict[str, Any]]:
    """Write the files of ``n`` finished runs (logs of ~20 KB, or of ``size`` bytes);
    return their ``pipeline_runs`` rows."""
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
        if size is not None:  # distinct content per run: no server can deduplicate it
            log_bytes = (log_bytes * (size // len(log_bytes) + 1))[:size]
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


def _settings(root: Path, server: Server) -> Settings:
    return load_settings(
        _env_file=None,
        database_url=f"sqlite:///{root / 'ff.db'}",
        data_dir=root,
        logs_dir=root / "logs",
        pipelines_dir=root / "pipelines",
        log_retention_runs=1,
        log_retention_days=None,
        log_max_size_mb=None,
        log_retention_keep_last_success=False,
        s3_backup_enabled=True,
        s3_endpoint_url=server.url,
        s3_bucket=FASTFLOW_BUCKET,
        s3_access_key=server.access_key,
        s3_secret_access_key=server.secret_key,
        s3_region=server.region,
        s3_max_concurrency=int(
            os.environ.get("BENCH_S3_MAX_CONCURRENCY", DEFAULT_S3_MAX_CONCURRENCY)
        ),
    )


def _baseline_one(client: Any, bucket: str, key: str, path: Path, by_answer: bool = False) -> None:
    """What a careful hand-written uploader does per file: read, hash, put with the hash,
    HEAD and compare, delete. Files past 8 MiB go by ``upload_file`` (multipart, hashed
    once while read beforehand). ``by_answer``: compare the PutObject answer's ETag with
    the MD5 of the bytes sent instead of a HEAD (small files)."""
    if path.stat().st_size > LARGE_THRESHOLD:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        size = path.stat().st_size
        client.upload_file(
            str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest.hexdigest()}}
        )
    else:
        data = path.read_bytes()
        size = len(data)
        digest = hashlib.sha256(data)
        answer = client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64encode(digest.digest()).decode(),
            Metadata={"sha256": digest.hexdigest()},
        )
        if by_answer:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if answer.get("ETag", "").strip('"') != md5:
                BASELINE_FAILURES.append(f"{key}: ETag {answer.get('ETag')}, MD5 {md5}")
                return
            path.unlink()
            return
    head = client.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size or head["Metadata"].get("sha256") != digest.hexdigest():
        # kept, like fastflow keeps a file whose verification failed; counted and shown
        BASELINE_FAILURES.append(
            f"{key}: {head['ContentLength']} bytes, sha256 {head['Metadata'].get('sha256')}"
        )
        return
    path.unlink()


def _baseline(
    client: Any,
    root: Path,
    rows: list[dict[str, Any]],
    threads: int,
    tag: str,
    by_answer: bool = False,
) -> None:
    keep = {r["pipeline_name"]: r for r in rows}  # the newest run of each pipeline stays
    todo = [
        (root / rel, f"{tag}/{rel}")
        for row in rows
        if keep[row["pipeline_name"]] is not row
        for rel in (row["log_file"], row["metrics_file"])
    ]
    if threads == 1:
        for path, key in todo:
            _baseline_one(client, NAIVE_BUCKET, key, path, by_answer)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda item: _baseline_one(client, NAIVE_BUCKET, item[1], item[0], by_answer),
                todo,
            )
        )


def _stats(xs: list[float], fmt: str = ",.1f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def _empty(client: Any, bucket: str) -> None:
    """Delete every object (keeps moto's memory and s3rver's disk flat across rounds);
    a server that cannot list them keeps them (s3rver answered ListObjectsV2 with an
    InternalError here once): only disk space is at stake."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
    except Exception as e:
        print(f"(could not empty {bucket}: {type(e).__name__}: {e})", flush=True)


def _fastflow(
    settings: Settings, rows: list[dict[str, Any]], rnd: int
) -> tuple[float, float, bool]:
    settings = settings.model_copy(update={"s3_prefix": f"r{rnd}"})
    for pipe in PIPELINES:
        (settings.pipelines_dir / pipe).mkdir(parents=True, exist_ok=True)
        (settings.pipelines_dir / pipe / "main.py").write_text("print('hi')\n")
    ctx = bootstrap(settings)
    with ctx.db.engine.begin() as conn:
        conn.execute(insert(PipelineRun), rows)
    expected = len(rows) - len(PIPELINES)
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
    ok = (
        summary.archived_runs == expected
        and summary.deleted_runs == expected
        and summary.backup_failures == 0
        and left == len(PIPELINES)
        and ledger == expected
    )
    return wall, used, ok


def _measure(server: Server, top: Path, runs: int, log_bytes: int | None) -> dict[str, Any]:
    """``REPEAT`` interleaved rounds of fastflow, sequential and pool on ``server``."""
    expected = runs - len(PIPELINES)
    names = ["fastflow", "sequential", "pool"] + (["pool_etag"] if log_bytes is None else [])
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    counts_ok = True
    now = datetime.now(UTC)
    client = None
    for rnd in range(REPEAT):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            root = top / f"{rnd}-{name}"
            settings = _settings(root, server)
            if client is None:
                client = make_client(settings)
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for bucket in {FASTFLOW_BUCKET, NAIVE_BUCKET} - existing:
                    client.create_bucket(Bucket=bucket)
            rows = _make_runs(settings.logs_root, runs, now, log_bytes)
            if name == "fastflow":
                wall, used, ok = _fastflow(settings, rows, rnd)
                counts_ok &= ok
            else:
                threads = 1 if name == "sequential" else POOL_THREADS
                t0, c0 = time.perf_counter(), time.process_time()
                _baseline(
                    client,
                    settings.logs_root,
                    rows,
                    threads,
                    f"{rnd}-{name}",
                    by_answer=name == "pool_etag",
                )
                wall, used = time.perf_counter() - t0, time.process_time() - c0
            rates[name].append(expected / wall)
            cpu[name].append(used / expected * 1000)
            shutil.rmtree(root, ignore_errors=True)
            if log_bytes is not None:  # large objects: free the server's memory/disk
                for bucket in (FASTFLOW_BUCKET, NAIVE_BUCKET):
                    _empty(client, bucket)
    ratios = {
        base: [f / b for f, b in zip(rates["fastflow"], rates[base], strict=True)]
        for base in ("sequential", "pool")
    }
    best = max(("sequential", "pool"), key=lambda b: statistics.median(rates[b]))
    return {
        "runs": runs,
        "log_bytes": log_bytes,
        "rates": rates,
        "cpu_ms_per_run": cpu,
        "best_baseline": best,
        "ratio_vs_best": ratios[best],
        "ratio_vs_sequential": ratios["sequential"],
        "ratio_vs_pool": ratios["pool"],
        "ratio_vs_pool_etag": [
            f / b for f, b in zip(rates["fastflow"], rates.get("pool_etag", []), strict=False)
        ],
        "cpu_ratio": [f / b for f, b in zip(cpu["fastflow"], cpu["sequential"], strict=True)],
        "counts_ok": counts_ok,
    }


def _servers() -> list[tuple[str, Any]]:
    names = [n.strip() for n in os.environ.get("BENCH_S3_SERVERS", "moto,s3rver").split(",")]
    return [(n, {"moto": MotoS3Server, "s3rver": S3rverServer}[n]) for n in names if n]


def main() -> dict[str, Any]:
    load_before = os.getloadavg()
    out: dict[str, Any] = {"repeat": REPEAT, "concurrency": DEFAULT_S3_MAX_CONCURRENCY}
    for name, factory in _servers():
        try:
            server_cm = factory()
        except Exception as e:  # s3rver needs npm: say so instead of failing every row
            out[name] = {"skipped": f"{name} did not start: {e}"}
            continue
        with tempfile.TemporaryDirectory(prefix="ff-bench-cleanup-") as tmp, server_cm as server:
            small = _measure(server, Path(tmp) / "small", RUNS, None)
            large = _measure(server, Path(tmp) / "large", LARGE_RUNS, LARGE_MB << 20)
        out[name] = {"small": small, "large": large}
        for r in (small, large):
            size = "~20 KB" if r["log_bytes"] is None else f"{LARGE_MB} MB"
            print(
                f"cleanup on {name}, {r['runs']:,} runs x ({size} log + metrics), {REPEAT} "
                f"interleaved rounds: fastflow {_stats(r['rates']['fastflow'])} runs/s, "
                f"sequential {_stats(r['rates']['sequential'])}, pool({POOL_THREADS}) "
                f"{_stats(r['rates']['pool'])}"
                + (
                    f", pool verifying by ETag {_stats(r['rates']['pool_etag'])}"
                    if "pool_etag" in r["rates"]
                    else ""
                )
                + f"; ratio vs {r['best_baseline']} "
                f"{_stats(r['ratio_vs_best'], '.2f')}; CPU/run fastflow "
                f"{_stats(r['cpu_ms_per_run']['fastflow'], '.2f')} ms vs sequential "
                f"{_stats(r['cpu_ms_per_run']['sequential'], '.2f')} ms "
                f"(ratio {_stats(r['cpu_ratio'], '.2f')}); counts "
                f"{'OK' if r['counts_ok'] else 'MISMATCH'}",
                flush=True,
            )
        out[name]["goals"] = [
            goal(
                f"cleanup {RUNS:,} x 20 KB on {name}: runs/s vs {small['best_baseline']}",
                small["ratio_vs_best"],
                ">=",
                1.0,
            ),
            goal(
                f"cleanup on {name}: client CPU per run vs sequential",
                small["cpu_ratio"],
                "<=",
                1.5,
            ),
            goal(
                f"cleanup {LARGE_RUNS - len(PIPELINES)} x {LARGE_MB} MB on {name}: vs sequential",
                large["ratio_vs_sequential"],
                ">=",
                1.0,
            ),
            goal(
                f"cleanup {LARGE_RUNS - len(PIPELINES)} x {LARGE_MB} MB on {name}: vs pool",
                large["ratio_vs_pool"],
                ">=",
                1.0,
            ),
        ]
    out["goals"] = [g for name, _ in _servers() for g in out.get(name, {}).get("goals", [])]
    out["baseline_verification_failures"] = BASELINE_FAILURES[:20]
    if BASELINE_FAILURES:
        print(
            f"baseline verification failures: {len(BASELINE_FAILURES)}, e.g. {BASELINE_FAILURES[0]}"
        )
    out["load_before"] = load_before
    out["load_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
