"""Log search throughput against same-run baselines (issue 17).

1. Within a run: ``runs.logsearch`` over a local log of ``BENCH_SEARCH_MB`` MiB (1024;
   64 with ``BENCH_QUICK=1``) read through ``runs.readback``, in MB/s, against
   ``grep -c`` on the same file (case-sensitive pair) and ``grep -ci`` (fastflow's
   default, case-insensitive pair); the counts must agree.
2. Across runs: ``fastflow search`` (``runs.crosssearch``) over ``BENCH_SEARCH_RUNS`` (1000;
   100 quick) runs whose 1 MiB logs are only in the archive (a real S3 server, moto), against
   the sequential baseline a user would script: download each object, ``grep -c`` it.

A/B interleaved with the order alternating, ``BENCH_REPEAT`` (3) rounds; median
[min-max] and the load average before and after are printed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from tests.harness.s3server import MotoS3Server  # noqa: E402

from fastflow.config import load_settings  # noqa: E402
from fastflow.context import bootstrap  # noqa: E402
from fastflow.db.models import PipelineRun  # noqa: E402
from fastflow.lifecycle.cleanup import run_pass  # noqa: E402
from fastflow.runs import crosssearch, logsearch  # noqa: E402
from fastflow.runs import files as logfiles  # noqa: E402
from fastflow.runs.readback import open_log  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
SEARCH_MB = int(os.environ.get("BENCH_SEARCH_MB", "64" if QUICK else "1024"))
RUNS = int(os.environ.get("BENCH_SEARCH_RUNS", "100" if QUICK else "1000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
NEEDLE = "NEEDLE-4711"
LINE = b"[2026-01-01 00:00:00.000] step 12345 wrote 678 rows to the warehouse, batch ok\n"
MIB = 1024 * 1024


def _block(tag: str) -> bytes:
    """1 MiB of log lines; the first line of a tagged block carries the needle."""
    lines = LINE * (MIB // len(LINE))
    head = f"[2026-01-01 00:00:00.000] {tag}\n".encode()
    return (head + lines)[:MIB]


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"


def _ab(a: Callable[[], Any], b: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Seconds of ``a`` and ``b``, interleaved, the order alternating each round."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(REPEAT):
        order = [("a", a), ("b", b)]
        if i % 2:
            order.reverse()
        for name, call in order:
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times["a"], times["b"]


def _grep_count(args: list[str], path: Path) -> int:
    res = subprocess.run(["grep", *args, NEEDLE, str(path)], capture_output=True, text=True)
    return int(res.stdout.strip() or 0)


# --- 1. within a run ----------------------------------------------------------------------


def _local(root: Path) -> dict[str, Any]:
    settings = load_settings(
        database_url=f"sqlite:///{root / 'local' / 'fastflow.db'}",
        data_dir=root / "local",
        logs_dir=root / "local-logs",
        pipelines_dir=root,
    )
    ctx = bootstrap(settings)
    rel = logfiles.log_rel("bench", "00000000-0000-4000-8000-000000000001")
    path = settings.logs_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    planted = 0
    with path.open("wb") as f:
        for i in range(SEARCH_MB):
            tagged = i % 64 == 7
            f.write(_block(f"{NEEDLE} in block {i}" if tagged else f"block {i}"))
            planted += tagged
    run = PipelineRun(
        id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        pipeline_name="bench",
        status="SUCCESS",
        triggered_by="cli",
        started_at=datetime.now(UTC),
        log_file=rel,
    )
    with ctx.db.session() as s:
        s.add(run)
    size = path.stat().st_size

    def fastflow(case_sensitive: bool) -> int:
        source = open_log(ctx, run.id, run, chunk=MIB)
        matcher = logsearch.Matcher(NEEDLE, case_sensitive=case_sensitive)
        return sum(1 for _ in logsearch.search(source.chunks, matcher))

    counts_ok = (
        fastflow(True) == _grep_count(["-c"], path) == planted
        and fastflow(False) == _grep_count(["-ci"], path) == planted
    )  # also warms the page cache for both sides
    ff_cs, grep_cs = _ab(lambda: fastflow(True), lambda: _grep_count(["-c"], path))
    ff_ci, grep_ci = _ab(lambda: fastflow(False), lambda: _grep_count(["-ci"], path))
    ctx.db.dispose()
    path.unlink()
    mb = size / 1e6

    def rates(xs: list[float]) -> list[float]:
        return [mb / x for x in xs]

    return {
        "mb": SEARCH_MB,
        "bytes": size,
        "planted": planted,
        "counts_ok": counts_ok,
        "fastflow_mb_s": rates(ff_cs),
        "grep_mb_s": rates(grep_cs),
        "ratio": statistics.median(grep_cs) / statistics.median(ff_cs),
        "fastflow_ci_mb_s": rates(ff_ci),
        "grep_ci_mb_s": rates(grep_ci),
        "ratio_ci": statistics.median(grep_ci) / statistics.median(ff_ci),
    }


# --- 2. across archived runs --------------------------------------------------------------


def _archived(root: Path, server: MotoS3Server) -> dict[str, Any]:
    bucket = "bench-search"
    raw = boto3.client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    raw.create_bucket(Bucket=bucket)
    settings = load_settings(
        database_url=f"sqlite:///{root / 'runs' / 'fastflow.db'}",
        data_dir=root / "runs",
        logs_dir=root / "runs-logs",
        pipelines_dir=root,
        s3_backup_enabled=True,
        s3_endpoint_url=server.url,
        s3_bucket=bucket,
        s3_access_key=server.access_key,
        s3_secret_access_key=server.secret_key,
        log_retention_days=1,
    )
    ctx = bootstrap(settings)
    now = datetime.now(UTC)
    planted = 0
    with ctx.db.session() as s:
        for i in range(RUNS):
            rid = uuid.uuid4()
            rel = logfiles.log_rel("bench", str(rid))
            path = settings.logs_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tagged = i % 10 == 3
            planted += tagged
            path.write_bytes(_block(f"{NEEDLE} run {i}" if tagged else f"run {i}"))
            started = now - timedelta(days=10, seconds=i)
            s.add(
                PipelineRun(
                    id=rid,
                    pipeline_name="bench",
                    status="SUCCESS",
                    triggered_by="cli",
                    started_at=started,
                    finished_at=started + timedelta(seconds=1),
                    exit_code=0,
                    log_file=rel,
                    log_size=MIB,
                )
            )
        # the pipeline's newest run, recent: retention archives all the others
        s.add(
            PipelineRun(
                id=uuid.uuid4(),
                pipeline_name="bench",
                status="SUCCESS",
                triggered_by="cli",
                started_at=now,
                finished_at=now,
                exit_code=0,
            )
        )
    t0 = time.perf_counter()
    summary = run_pass(ctx, "bench")
    archive_s = time.perf_counter() - t0
    assert summary.archived_runs == RUNS, summary.to_dict()
    keys = [
        obj["Key"]
        for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
        if obj["Key"].endswith("run.log")
    ]
    assert len(keys) == RUNS
    tmp = root / "download.log"

    def fastflow() -> int:
        matcher = logsearch.Matcher(NEEDLE)
        found = crosssearch.search_runs(ctx, matcher, crosssearch.Filters(), limit=100_000)
        return sum(1 for x in found if isinstance(x, crosssearch.SearchHit))

    def baseline() -> int:
        total = 0
        for key in keys:
            raw.download_file(bucket, key, str(tmp))
            total += _grep_count(["-ci"], tmp)
        return total

    counts_ok = fastflow() == baseline() == planted
    ff, base = _ab(fastflow, baseline)
    ctx.db.dispose()
    return {
        "runs": RUNS,
        "planted": planted,
        "counts_ok": counts_ok,
        "archive_s": archive_s,
        "workers": crosssearch.WORKERS,
        "fastflow_s": ff,
        "baseline_s": base,
        "ratio": statistics.median(base) / statistics.median(ff),
        "fastflow_mb_s": [RUNS * MIB / 1e6 / x for x in ff],
    }


def main() -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ff-bench-search-") as tmp:
        root = Path(tmp)
        local = _local(root)
        print(
            f"local {SEARCH_MB} MiB log, {REPEAT} rounds A/B: fastflow "
            f"{_stats(local['fastflow_mb_s'])} MB/s vs grep -c {_stats(local['grep_mb_s'])} "
            f"MB/s (ratio {local['ratio']:.2f});"
            f" case-insensitive {_stats(local['fastflow_ci_mb_s'])} vs grep -ci "
            f"{_stats(local['grep_ci_mb_s'])} MB/s (ratio {local['ratio_ci']:.2f}); counts "
            f"{'OK' if local['counts_ok'] else 'MISMATCH'}",
            flush=True,
        )
        with MotoS3Server() as server:
            archived = _archived(root, server)
        print(
            f"{RUNS} archived 1 MiB logs, {REPEAT} rounds A/B: fastflow search "
            f"{_stats(archived['fastflow_s'])} s ({archived['workers']} workers) vs sequential "
            f"download + grep -c {_stats(archived['baseline_s'])} s: {archived['ratio']:.2f}x "
            f"faster; counts {'OK' if archived['counts_ok'] else 'MISMATCH'}",
            flush=True,
        )
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}", flush=True)
    return {
        "local": local,
        "archived": archived,
        "repeat": REPEAT,
        "load_before": load_before,
        "load_after": load_after,
    }


if __name__ == "__main__":
    main()
