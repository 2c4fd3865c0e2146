"""``GET /api/runs?limit=50`` against its ceiling: the same JSON bytes from a static route
of the same server process (same app, middleware and uvicorn; no authentication, no
database), ``BENCH_API_CLIENTS`` (50) connections back to back for ``BENCH_API_SECONDS``
(5) per round, rounds interleaved A/B with alternating order, ``BENCH_REPEAT`` (3) times.
Goal (issue 14): p99 of the API <= 1.1x the static route's p99.

The load comes from ``wrk`` (Debian package; ``make bench`` installs it): a Python load
generator saturates before the server does (measured here: ~90 req/s from httpx against
~900 req/s from wrk for the same static route), which would make both sides look equal.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
from goals import goal, ratios  # noqa: E402
from tests.harness.loadgen import seed_finished_runs  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
CLIENTS = int(os.environ.get("BENCH_API_CLIENTS", "50"))
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "3" if QUICK else "5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
RUNS = 2_000
GOAL = 1.1
STATIC = "/bench/static-runs"
SERVE_FLAG = "--serve"


def _serve(port: int, body_file: str) -> None:
    """In the server child: fastflow's app as ``fastflow serve`` builds it, plus one route
    answering the bytes in ``body_file`` (read on first use)."""
    import uvicorn
    from fastapi import Response

    from fastflow.config import load_settings
    from fastflow.context import bootstrap
    from fastflow.server import create_app

    app = create_app(bootstrap(load_settings()))
    cache: list[bytes] = []

    @app.get(STATIC)
    def static_runs() -> Response:
        if not cache:
            cache.append(Path(body_file).read_bytes())
        return Response(content=cache[0], media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")


def _wait(url: str, proc: Any) -> None:
    import subprocess
    import threading
    import time

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise subprocess.TimeoutExpired("serve", 60)
        threading.Event().wait(0.05)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, headers: dict[str, str], seconds: float) -> dict[str, float]:
    """p99 (ms), requests/s and non-2xx/socket errors of one ``wrk`` run."""
    import re
    import shutil
    import subprocess

    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk; `make bench` does it)")
    args = [wrk, "-t2", f"-c{CLIENTS}", f"-d{max(1, round(seconds))}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if p99 is None or rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(x) for x in sock.groups()) if sock else 0
    return {
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "rps": float(rps.group(1)),
        "errors": errors,
    }


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}-{max(xs):.0f}]"


def main() -> dict[str, Any]:
    import subprocess

    from fastflow import accounts
    from fastflow.config import load_settings
    from fastflow.context import bootstrap

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ff-bench-ceiling-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{root / 'ff.db'}",
            "DATA_DIR": str(root / "data"),
            "LOGS_DIR": str(root / "logs"),
            "PIPELINES_DIR": str(root / "pipelines"),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        }
        ctx = bootstrap(
            load_settings(
                _env_file=None,
                database_url=env["DATABASE_URL"],
                data_dir=root / "data",
                logs_dir=root / "logs",
                pipelines_dir=root / "pipelines",
            )
        )
        seed_finished_runs(ctx, RUNS, datetime.now(UTC))
        headers = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'bench', 'admin')}"}
        ctx.db.dispose()
        body = root / "runs.json"
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), SERVE_FLAG, str(port), str(body)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait(url, proc)
            res = httpx.get(url + "/api/runs?limit=50", headers=headers, timeout=30)
            res.raise_for_status()
            body.write_bytes(res.content)
            for path in ("/api/runs?limit=50", STATIC):  # warm both
                _wrk(url + path, headers, 1)
            p99: dict[str, list[float]] = {"api": [], "static": []}
            rps: dict[str, list[float]] = {"api": [], "static": []}
            errors = 0
            for rnd in range(REPEAT):
                order = [("api", "/api/runs?limit=50"), ("static", STATIC)]
                if rnd % 2:
                    order.reverse()
                for name, path in order:
                    got = _wrk(url + path, headers, SECONDS)
                    p99[name].append(got["p99_ms"])
                    rps[name].append(got["rps"])
                    errors += int(got["errors"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ratio = ratios(p99["api"], p99["static"])
    print(
        "/api/runs?limit=50 vs the same JSON from a static route, "
        f"{CLIENTS} clients, {REPEAT} x {SECONDS:g} s A/B (load {load[0]:.1f}): p99 API "
        f"{_spread(p99['api'])} ms, static {_spread(p99['static'])} ms, ratio "
        f"{statistics.median(ratio):.2f} (goal <= {GOAL}); req/s API {_spread(rps['api'])}, "
        f"static {_spread(rps['static'])}; errors {errors}"
    )
    return {
        "clients": CLIENTS,
        "p99_ms": p99,
        "rps": rps,
        "errors": errors,
        "goals": [
            goal(f"`/api/runs?limit=50`, {CLIENTS} clients: p99 vs static route", ratio, "<=", GOAL)
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == SERVE_FLAG:
        _serve(int(sys.argv[2]), sys.argv[3])
    else:
        main()
