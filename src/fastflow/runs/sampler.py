"""Sample CPU and memory of a run's whole process tree into ``metrics.jsonl``.

One JSON object per line: ``timestamp`` (ISO 8601 UTC), ``cpu_percent``, ``ram_mb``.
Samples every ``interval`` seconds while the run lives, plus one exit sample computed
from the reaped child's resource usage, so even a very short run has one line.

Limits: with a hard memory limit the tree is measured at least every
``LIMIT_INTERVAL_S`` and ``exceeded`` is set as soon as its resident memory passes the
limit (the supervisor then kills the tree); soft limits only mark the exit sample
(``soft_limit_exceeded``) and ``soft_exceeded``.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import TextIO

import psutil

SAMPLE_INTERVAL_S = 2.0
LIMIT_INTERVAL_S = 0.25


def line(cpu_percent: float, ram_mb: float, **extra: object) -> str:
    """One line of ``metrics.jsonl`` (with its newline), for local and container runs."""
    record: dict[str, object] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "cpu_percent": round(cpu_percent, 1),
        "ram_mb": round(ram_mb, 2),
    }
    record.update(extra)
    return json.dumps(record) + "\n"


class TreeSampler:
    """Background thread sampling the process tree rooted at ``pid``."""

    def __init__(
        self,
        pid: int,
        out: TextIO,
        interval: float = SAMPLE_INTERVAL_S,
        *,
        memory_limit_mb: int | None = None,
        memory_soft_mb: int | None = None,
        cpu_soft: float | None = None,
    ) -> None:
        self._root_pid = pid
        self._out = out
        self._interval = interval
        self._memory_limit = memory_limit_mb * 1_048_576 if memory_limit_mb else None
        self._memory_soft = memory_soft_mb * 1_048_576 if memory_soft_mb else None
        self._cpu_soft = cpu_soft * 100.0 if cpu_soft else None
        self.exceeded = threading.Event()
        self.soft_exceeded: set[str] = set()
        self._stop = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"metrics-{pid}", daemon=True)
        self.samples = 0
        self.peak_rss = 0

    def start(self) -> None:
        self._prime()
        self._thread.start()

    def _measure(self) -> tuple[float, int, bool]:
        cpu = 0.0
        rss = 0
        alive = False
        for p in self._tree():
            try:
                with p.oneshot():
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                alive = True
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if self._memory_limit is not None and rss > self._memory_limit:
            self.exceeded.set()
        if self._memory_soft is not None and rss > self._memory_soft:
            self.soft_exceeded.add("memory")
        if self._cpu_soft is not None and cpu > self._cpu_soft:
            self.soft_exceeded.add("cpu")
        return cpu, rss, alive

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self._root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        current: list[psutil.Process] = []
        for p in procs:
            known = self._procs.get(p.pid)
            if known is None:
                self._procs[p.pid] = p
                known = p
            current.append(known)
        return current

    def _prime(self) -> None:
        self._measure()  # cpu_percent needs a first call; also seeds the peak RSS

    def sample(self) -> None:
        cpu, rss, alive = self._measure()
        if alive:
            self._emit(line(cpu, rss / 1_048_576))

    def _emit(self, text: str) -> None:
        with self._lock:
            self._out.write(text)
            self._out.flush()
            self.samples += 1

    def _loop(self) -> None:
        if self._memory_limit is None:
            while not self._stop.wait(self._interval):
                self.sample()
            return
        # check the limit often; write a metrics line only every ``interval``
        next_line = time.monotonic() + self._interval
        while not self._stop.wait(LIMIT_INTERVAL_S):
            if time.monotonic() >= next_line:
                next_line += self._interval
                self.sample()
            else:
                self._measure()

    def stop(self, *, cpu_seconds: float, wall_seconds: float) -> None:
        """Stop sampling and write the exit sample.

        Its ``cpu_percent`` is the whole run's average (CPU time of the reaped tree over
        wall time); its ``ram_mb`` is the peak tree RSS observed while sampling.
        """
        self._stop.set()
        self._thread.join(timeout=5)
        cpu = 100.0 * cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0
        extra: dict[str, object] = {"exit": True}
        if self.soft_exceeded:
            extra["soft_limit_exceeded"] = sorted(self.soft_exceeded)
        self._emit(line(cpu, self.peak_rss / 1_048_576, **extra))
