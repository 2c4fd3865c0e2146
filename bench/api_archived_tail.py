"""Archived log tails through the API vs a hand-written ranged GET on one shared client.

Issue 14's goal: ``GET /api/runs/{id}/logs?tail_bytes=65536`` for a run whose log lives
only in the archive, with ``BENCH_CLIENTS`` (50) concurrent clients, reaches >= 0.8x the
requests per second of the baseline — the same number of threads doing a ranged
``get_object`` of the same 64 KiB on one shared boto3 client (what the server must do at
least). A real ``fastflow serve`` and a real S3 server (moto) on this machine; A/B/A/B
interleaved with rotating order, ``BENCH_REPEAT`` (3) rounds of ``BENCH_SECONDS`` (5) s
each; median [min-max] and the load average are printed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import boto3  # noqa: E402
import httpx  # noqa: E402
from botocore.config import Config  # noqa: E402
from goals import goal, instance_env, ratios, viewer_token  # noqa: E402
from tests.harness.s3server import MotoS3Server  # noqa: E402
from tests.harness.serve import fastflow_serve  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "50"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "2" if QUICK else "5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
TAIL = 65536
GOAL = 0.8


def _hammer(call: Callable[[], int], seconds: float) -> tuple[float, list[float], int]:
    """``CLIENTS`` threads calling ``call`` for ``seconds``: (req/s, latencies, errors)."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS + 1)

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        start.wait()
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                ok = call() == TAIL
            except Exception:
                ok = False
            mine.append(time.perf_counter() - t0)
            bad += not ok
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return len(latencies) / elapsed, latencies, errors


def _archived_run(env: dict[str, str], root: Path) -> str:
    """Two runs of a chatty pipeline; retention 1 archives and deletes the older one."""
    folder = Path(env["PIPELINES_DIR"]) / "chatty"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(
        "for i in range(40000):\n    print(f'line {i} of a log that is read back', i * 7)\n"
    )

    def cli(*args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "fastflow", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        return res.stdout

    first = cli("run", "chatty").strip().splitlines()[-1]
    cli("run", "chatty")
    cli("cleanup")
    return first


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"


def main() -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ff-bench-tail-") as tmp, MotoS3Server() as server:
        root = Path(tmp)
        bucket = "bench-tail"
        raw = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
            config=Config(max_pool_connections=CLIENTS + 10),
        )
        raw.create_bucket(Bucket=bucket)
        env = instance_env(
            root,
            S3_BACKUP_ENABLED="true",
            S3_ENDPOINT_URL=server.url,
            S3_BUCKET=bucket,
            S3_ACCESS_KEY=server.access_key,
            S3_SECRET_ACCESS_KEY=server.secret_key,
            LOG_RETENTION_RUNS="1",
        )
        run_id = _archived_run(env, root)
        key = f"pipeline-logs/chatty/{run_id}/run.log"
        size = raw.head_object(Bucket=bucket, Key=key)["ContentLength"]
        token = viewer_token(env, cwd=root)
        with fastflow_serve(env) as url:
            http = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {token}"},
                limits=httpx.Limits(max_connections=CLIENTS + 10),
                timeout=60,
            )
            path = f"/api/runs/{run_id}/logs?tail_bytes={TAIL}"
            assert http.get(path).headers.get("x-log-source") == "archive"

            def api() -> int:
                return len(http.get(path).content)

            def ranged() -> int:
                resp = raw.get_object(Bucket=bucket, Key=key, Range=f"bytes={size - TAIL}-")
                return len(resp["Body"].read())

            api()
            ranged()  # warm both
            rounds: dict[str, list[tuple[float, list[float], int]]] = {"api": [], "base": []}
            for i in range(REPEAT):
                order = [("api", api), ("base", ranged)]
                if i % 2:
                    order.reverse()
                for name, call in order:
                    rounds[name].append(_hammer(call, SECONDS))
            http.close()
    api_rps = [r[0] for r in rounds["api"]]
    base_rps = [r[0] for r in rounds["base"]]
    ratio = statistics.median(api_rps) / statistics.median(base_rps)
    api_lat = [x for r in rounds["api"] for x in r[1]]
    base_lat = [x for r in rounds["base"] for x in r[1]]
    result: dict[str, Any] = {
        "clients": CLIENTS,
        "seconds": SECONDS,
        "repeat": REPEAT,
        "api_rps": api_rps,
        "base_rps": base_rps,
        "ratio": ratio,
        "goal": GOAL,
        "pass": ratio >= GOAL,
        "api_p50_ms": _pct(api_lat, 0.5),
        "api_p99_ms": _pct(api_lat, 0.99),
        "base_p50_ms": _pct(base_lat, 0.5),
        "base_p99_ms": _pct(base_lat, 0.99),
        "errors": sum(r[2] for r in rounds["api"]) + sum(r[2] for r in rounds["base"]),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "goals": [
            goal(
                f"archived log tail via the API, {CLIENTS} clients: req/s vs shared-client "
                "ranged GET",
                ratios(api_rps, base_rps),
                ">=",
                GOAL,
            )
        ],
    }
    print(
        f"archived tail via API, {CLIENTS} clients, {REPEAT} x {SECONDS:g} s A/B: "
        f"API {_stats(api_rps)} req/s (p50 {result['api_p50_ms']:.0f} ms, p99 "
        f"{result['api_p99_ms']:.0f} ms); shared-client ranged GET {_stats(base_rps)} req/s "
        f"(p50 {result['base_p50_ms']:.0f} ms); ratio {ratio:.2f} (goal >= {GOAL}: "
        f"{'PASS' if result['pass'] else 'FAIL'}); errors {result['errors']}; load "
        f"{load_before[0]:.1f} -> {result['load_after'][0]:.1f}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
