"""API latency under load: ``BENCH_CLIENTS`` (100) concurrent clients poll
``GET /api/settings/backup-failures`` and ``GET /api/runs``, each every
``BENCH_POLL_INTERVAL`` seconds (1.0; 0 = back to back), for ``BENCH_SECONDS`` (30) while
a forced cleanup pass archives ``BENCH_LOAD_RUNS`` (2,000) runs. A second, identical pass
without load is the baseline for "the pass is unaffected". Prints p50/p95/p99 latency
(goal: p99 under 200 ms on a 2-core machine), the error count and both pass durations.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
from goals import goal  # noqa: E402
from tests.harness.loadgen import LoadStats, hammer, seed_finished_runs  # noqa: E402
from tests.harness.s3server import MotoS3Server  # noqa: E402
from tests.harness.serve import fastflow_serve  # noqa: E402

from fastflow import accounts  # noqa: E402
from fastflow.config import load_settings  # noqa: E402
from fastflow.context import bootstrap  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "20" if QUICK else "100"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5" if QUICK else "30"))
RUNS = int(os.environ.get("BENCH_LOAD_RUNS", "200" if QUICK else "2000"))
INTERVAL = float(os.environ.get("BENCH_POLL_INTERVAL", "1.0"))
PATHS = ["/api/settings/backup-failures", "/api/runs?limit=50"]


def _scenario(server: MotoS3Server, root: Path, bucket: str, with_load: bool) -> dict[str, Any]:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{root / 'ff.db'}",
        "DATA_DIR": str(root / "data"),
        "LOGS_DIR": str(root / "logs"),
        "PIPELINES_DIR": str(root / "pipelines"),
        "LOG_RETENTION_RUNS": "1",
        "S3_BACKUP_ENABLED": "true",
        "S3_ENDPOINT_URL": server.url,
        "S3_BUCKET": bucket,
        "S3_ACCESS_KEY": server.access_key,
        "S3_SECRET_ACCESS_KEY": server.secret_key,
    }
    ctx = bootstrap(
        load_settings(
            **{
                k.lower(): v
                for k, v in env.items()
                if k.isupper()
                and k.lower()
                in (
                    "database_url",
                    "data_dir",
                    "logs_dir",
                    "pipelines_dir",
                    "log_retention_runs",
                    "s3_backup_enabled",
                    "s3_endpoint_url",
                    "s3_bucket",
                    "s3_access_key",
                    "s3_secret_access_key",
                )
            }
        )
    )
    seed_finished_runs(ctx, RUNS, datetime.now(UTC))
    headers = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'bench', 'admin')}"}
    ctx.db.dispose()
    with fastflow_serve(env) as base:
        result: list[Any] = []

        def clean() -> None:
            t0 = time.perf_counter()
            res = httpx.post(base + "/api/settings/cleanup/force", headers=headers, timeout=900)
            result.append((time.perf_counter() - t0, res.json()))

        cleaner = threading.Thread(target=clean)
        cleaner.start()
        stats = (
            hammer(base, headers, PATHS, CLIENTS, SECONDS, INTERVAL) if with_load else LoadStats()
        )
        cleaner.join()
    pass_s, summary = result[0]
    return {"stats": stats, "pass_s": pass_s, "summary": summary}


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, MotoS3Server() as server:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
        for bucket in ("bench-load", "bench-quiet"):
            s3.create_bucket(Bucket=bucket)
        loaded = _scenario(server, Path(tmp) / "loaded", "bench-load", with_load=True)
        quiet = _scenario(server, Path(tmp) / "quiet", "bench-quiet", with_load=False)
    stats: LoadStats = loaded["stats"]
    out = {
        "clients": CLIENTS,
        "interval_s": INTERVAL,
        "seconds": SECONDS,
        "runs": RUNS,
        "requests": len(stats.latencies),
        "errors": len(stats.errors),
        "p50_ms": stats.percentile(50) * 1000,
        "p95_ms": stats.percentile(95) * 1000,
        "p99_ms": stats.percentile(99) * 1000,
        "rps": len(stats.latencies) / stats.duration_s if stats.duration_s else 0.0,
        "pass_loaded_s": loaded["pass_s"],
        "pass_quiet_s": quiet["pass_s"],
        "archived_loaded": loaded["summary"]["archived_runs"],
        "archived_quiet": quiet["summary"]["archived_runs"],
        "failures_loaded": loaded["summary"]["backup_failures"],
        "goals": [
            goal(
                f"API p99 with {CLIENTS} pollers during a {RUNS:,}-run pass",
                [stats.percentile(99) * 1000],
                "<",
                200,
                "ms",
            )
        ],
    }
    print(
        f"API under load: {CLIENTS} clients polling every {INTERVAL:g} s for {SECONDS:g} s "
        f"during a pass over {RUNS:,} runs: "
        f"{out['requests']:,} requests ({out['rps']:.0f}/s), {out['errors']} errors, "
        f"p50 {out['p50_ms']:.0f} ms, p95 {out['p95_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms "
        f"(goal p99 < 200 ms); pass {out['pass_loaded_s']:.1f} s with load "
        f"({out['archived_loaded']} archived, {out['failures_loaded']} failures) vs "
        f"{out['pass_quiet_s']:.1f} s without ({out['archived_quiet']} archived)"
    )
    return out


if __name__ == "__main__":
    main()
