"""Load generation shared by tests/system/test_load.py and bench/load.py: seed many finished
runs quickly, and poll API routes from many concurrent clients, recording latencies."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from fastflow.runs import files as logfiles


def seed_finished_runs(ctx: Context, n: int, now: datetime, pipelines: int = 4) -> None:
    """``n`` finished runs with ~2 KB logs and metrics, oldest first, in one bulk insert."""
    root = ctx.settings.logs_root
    rows: list[dict[str, Any]] = []
    for i in range(n):
        name = f"load-{i % pipelines}"
        rid = uuid.uuid4()
        log_rel, metrics_rel = (
            logfiles.log_rel(name, str(rid)),
            logfiles.metrics_rel(name, str(rid)),
        )
        (root / log_rel).parent.mkdir(parents=True, exist_ok=True)
        text = f"[2026-01-01 00:00:00.000] run {rid} step {i} processed 1000 records\n" * 28
        (root / log_rel).write_text(text)
        (root / metrics_rel).write_text(
            '{"timestamp": "2026-01-01T00:00:00+00:00", "cpu_percent": 1.0, "ram_mb": 2.0}\n'
        )
        started = now - timedelta(days=2) + timedelta(seconds=30 * i)
        rows.append(
            {
                "id": rid,
                "pipeline_name": name,
                "status": "SUCCESS",
                "triggered_by": "schedule",
                "started_at": started,
                "finished_at": started + timedelta(seconds=3),
                "exit_code": 0,
                "log_file": log_rel,
                "metrics_file": metrics_rel,
                "log_size": len(text),
            }
        )
    with ctx.db.session() as s:
        for start in range(0, len(rows), 5000):
            s.execute(insert(PipelineRun), rows[start : start + 5000])


@dataclass
class LoadStats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]


async def _client(
    client: httpx.AsyncClient,
    paths: list[str],
    stop: float,
    stats: LoadStats,
    interval: float,
    offset: float,
) -> None:
    i = 0
    await asyncio.sleep(offset)  # spread the clients' first requests over one interval
    while time.monotonic() < stop:
        started = time.monotonic()
        path = paths[i % len(paths)]
        i += 1
        t0 = time.perf_counter()
        try:
            res = await client.get(path)
            if res.status_code != 200:
                stats.errors.append(f"{path}: HTTP {res.status_code}")
        except httpx.HTTPError as e:
            stats.errors.append(f"{path}: {type(e).__name__}")
        stats.latencies.append(time.perf_counter() - t0)
        if interval:
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def hammer_async(
    base: str,
    headers: dict[str, str],
    paths: list[str],
    clients: int,
    seconds: float,
    interval: float = 0.0,
) -> LoadStats:
    stats = LoadStats()
    # one connection per simulated client, in one pool (creating 100 clients costs seconds)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=30, limits=limits
    ) as client:
        t0 = time.monotonic()
        stop = t0 + seconds
        await asyncio.gather(
            *(
                _client(client, paths, stop, stats, interval, interval * n / clients)
                for n in range(clients)
            )
        )
        stats.duration_s = time.monotonic() - t0
    return stats


def hammer(
    base: str,
    headers: dict[str, str],
    paths: list[str],
    clients: int,
    seconds: float,
    interval: float = 0.0,
) -> LoadStats:
    """Poll ``paths`` round-robin from ``clients`` concurrent connections for ``seconds``;
    each client waits until ``interval`` seconds after its previous request started
    (0 = back to back: a saturation test). Runs its own event loop in a thread, so it also
    works where the calling thread has one (e.g. next to Playwright's sync API)."""
    out: list[LoadStats] = []
    worker = threading.Thread(
        target=lambda: out.append(
            asyncio.run(hammer_async(base, headers, paths, clients, seconds, interval))
        )
    )
    worker.start()
    worker.join()
    if not out:
        raise RuntimeError("the load generator failed; see the thread's traceback above")
    return out[0]
