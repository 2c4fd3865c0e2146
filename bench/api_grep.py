"""``GET /api/runs/{id}/logs?grep=`` against ``fastflow logs ID --grep`` — the same search
of the same local log, one through the HTTP API (NDJSON), one printed by the CLI — on a
log of ``BENCH_GREP_LINES`` (600,000) lines of which half match. A/B interleaved with the
order alternating, ``BENCH_REPEAT`` (3) rounds; median [min-max], the ratio API/CLI per
round and the load average are printed. Not a goal of issue 14: the API sent one
message per matching line (~20x the CLI's time on 300,000 matches) until its lines went
out in batches."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "src", REPO_ROOT / "bench", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
from goals import instance_env, ratios, spread, viewer_token  # noqa: E402
from tests.harness.serve import fastflow_serve  # noqa: E402
from tests.seeding import seed_run  # noqa: E402

from fastflow.config import load_settings  # noqa: E402
from fastflow.context import bootstrap  # noqa: E402

LINES = int(os.environ.get("BENCH_GREP_LINES", "600000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _log() -> bytes:
    return b"".join(
        b"[2026-01-01 00:00:00.000] %s %d of an ordinary job\n"
        % (b"matched step" if i % 2 else b"other work", i)
        for i in range(LINES)
    )


def main() -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-api-grep-") as tmp:
        root = Path(tmp)
        env = instance_env(root, S3_BACKUP_ENABLED="false")
        (root / "pipelines").mkdir()
        os.environ.update(env)
        ctx = bootstrap(load_settings())
        run_id = str(seed_run(ctx, "etl", datetime.now(UTC) - timedelta(hours=1), log=_log()).id)
        ctx.db.dispose()
        token = viewer_token(env)
        with fastflow_serve(env) as url:
            http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})

            def api() -> int:
                with http.stream("GET", f"/api/runs/{run_id}/logs?grep=matched", timeout=600) as r:
                    return sum(1 for _ in r.iter_lines())

            def cli() -> int:
                out = subprocess.run(
                    [sys.executable, "-m", "fastflow", "logs", run_id, "--grep", "matched"],
                    env=env,
                    capture_output=True,
                    check=True,
                ).stdout
                return out.count(b"\n")

            times: dict[str, list[float]] = {"api": [], "cli": []}
            counts: dict[str, int] = {}
            cases = [("api", api), ("cli", cli)]
            for i in range(REPEAT):
                for name, fn in cases if i % 2 == 0 else cases[::-1]:
                    t0 = time.perf_counter()
                    counts[name] = fn()
                    times[name].append(time.perf_counter() - t0)
            http.close()
    assert counts["api"] == counts["cli"] == LINES // 2, counts
    print(
        f"grep of {LINES:,} lines, {counts['api']:,} matches: API {spread(times['api'])} s, "
        f"CLI {spread(times['cli'])} s; ratio API/CLI {spread(ratios(times['api'], times['cli']))} "
        f"({REPEAT} interleaved rounds, load {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after)"
    )


if __name__ == "__main__":
    main()
