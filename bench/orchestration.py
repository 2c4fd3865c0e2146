"""Orchestration: queue throughput and scheduling latency, against a baseline that does
the same work without fastflow, interleaved in one run (A/B/A/B, ``BENCH_REPEAT`` ≥ 3,
median [min–max], load average printed).

1. Queue throughput: ``BENCH_QUEUE_RUNS`` trivial runs (default 10,000; set fewer on a
   small machine) queued at once and executed by a ``Dispatcher`` with
   ``MAX_CONCURRENT_RUNS`` = 1, 4, 8 — versus a pool of the same width launching the same
   ``python main.py`` with plain ``subprocess.run`` (output to a file). Ratio = fastflow
   runs/s ÷ baseline runs/s.
2. Scheduling latency: ``BENCH_PIPELINES`` pipelines (default 200) on
   ``interval_seconds: 5``, ticked by a ``ScheduleLoop`` for ``BENCH_SECONDS`` (default
   20): tick time → RUNNING (p50 / p99).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fastflow.config import load_settings  # noqa: E402
from fastflow.context import bootstrap  # noqa: E402
from fastflow.db.models import PipelineRun  # noqa: E402
from fastflow.orchestration import queue  # noqa: E402
from fastflow.orchestration.dispatcher import Dispatcher  # noqa: E402
from fastflow.orchestration.ticker import ScheduleLoop  # noqa: E402

RUNS = int(os.environ.get("BENCH_QUEUE_RUNS", "10000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
PIPELINES = int(os.environ.get("BENCH_PIPELINES", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
WIDTHS = (1, 4, 8)


def _env(root: Path, width: int) -> None:
    os.environ.update(
        DATABASE_URL=f"sqlite:///{root / 'ff.db'}?timeout=30",
        DATA_DIR=str(root / "data"),
        LOGS_DIR=str(root / "logs"),
        PIPELINES_DIR=str(root / "pipelines"),
        MAX_CONCURRENT_RUNS=str(width),
    )


def _fastflow_queue(root: Path, width: int) -> float:
    _env(root, width)
    ctx = bootstrap(load_settings())
    for _ in range(RUNS):
        queue.enqueue(ctx.db, "trivial", "api")
    d = Dispatcher(ctx)
    t0 = time.perf_counter()
    d.ensure_running()
    while True:
        with ctx.db.session() as s:
            left = (
                s.query(PipelineRun)
                .filter(PipelineRun.status.in_(("QUEUED", "PENDING", "RUNNING")))
                .count()
            )
        if not left:
            break
        time.sleep(0.2)
    took = time.perf_counter() - t0
    d.stop()
    ctx.db.dispose()
    return RUNS / took


def _baseline(root: Path, width: int) -> float:
    main = root / "pipelines" / "trivial" / "main.py"
    out = root / "plain"
    out.mkdir(exist_ok=True)

    def one(i: int) -> None:
        with (out / f"{i}.log").open("wb") as f:
            subprocess.run(
                [sys.executable, str(main)], stdout=f, stderr=subprocess.STDOUT, check=True
            )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        list(pool.map(one, range(RUNS)))
    return RUNS / (time.perf_counter() - t0)


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"


def queue_throughput() -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for width in WIDTHS:
        ff: list[float] = []
        base: list[float] = []
        for _ in range(REPEAT):  # A/B/A/B
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                (root / "pipelines" / "trivial").mkdir(parents=True)
                (root / "pipelines" / "trivial" / "main.py").write_text("print('ok')\n")
                ff.append(_fastflow_queue(root, width))
                base.append(_baseline(root, width))
        ratio = statistics.median(ff) / statistics.median(base)
        rows[str(width)] = {"fastflow": ff, "baseline": base, "ratio": ratio}
        print(
            f"queue, {RUNS} runs, MAX_CONCURRENT_RUNS={width}: fastflow {_stats(ff)} runs/s, "
            f"subprocess pool {_stats(base)} runs/s, ratio {ratio:.2f}",
            flush=True,
        )
    return rows


def scheduling_latency() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(PIPELINES):
            folder = root / "pipelines" / f"p{i:03d}"
            folder.mkdir(parents=True)
            (folder / "main.py").write_text("")
            (folder / "pipeline.json").write_text(
                '{"schedules": [{"interval_seconds": 5}], "on_overlap": "queue"}'
            )
        _env(root, 8)
        ctx = bootstrap(load_settings())
        d = Dispatcher(ctx)
        loop = ScheduleLoop(ctx, on_queued=d.wake)
        d.ensure_running()
        loop.start()
        time.sleep(SECONDS)
        loop.stop()
        d.stop()
        with ctx.db.session() as s:
            rows = s.query(PipelineRun).filter(PipelineRun.scheduled_for.is_not(None)).all()
        lat = sorted(
            (r.started_at - r.scheduled_for).total_seconds()
            for r in rows
            if r.status != "QUEUED" and r.scheduled_for is not None
        )
        ctx.db.dispose()
    if not lat:
        print("scheduling latency: no scheduled run started", flush=True)
        return {}
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"scheduling latency, {PIPELINES} pipelines every 5 s for {SECONDS:g} s: "
        f"{len(lat)} runs started, tick -> RUNNING p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms",
        flush=True,
    )
    return {"p50_s": p50, "p99_s": p99, "runs": len(lat)}


def main() -> dict[str, Any]:
    print(f"load average before: {os.getloadavg()}", flush=True)
    result = {"queue": queue_throughput(), "latency": scheduling_latency()}
    print(f"load average after: {os.getloadavg()}", flush=True)
    return result


if __name__ == "__main__":
    main()
