"""Write an executor's resource samples into ``metrics.jsonl``, in the format of
``runs.sampler``: one JSON object per line with ``timestamp`` (ISO 8601 UTC),
``cpu_percent`` (100 = one core) and ``ram_mb``; the last line is the exit sample
(``"exit": true``: the run's average CPU and its peak memory, plus
``soft_limit_exceeded`` when a soft limit was passed).

Guarantees: at most one line per ``interval`` seconds while the run lives (the first one
interval after the start, as ``runs.sampler``); exactly one
exit line, written by ``close``, even for a run too short to be sampled; thread-safe.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from fastflow.runs.sampler import line

MIB = 1_048_576
SAMPLE_INTERVAL_S = 2.0


class MetricsFile:
    """A ``MetricsSink`` writing to ``out``; ``soft_exceeded`` names the soft limits
    (``memory``, ``cpu``) that samples passed."""

    def __init__(
        self,
        out: TextIO,
        *,
        interval: float = SAMPLE_INTERVAL_S,
        memory_soft_mb: int | None = None,
        cpu_soft: float | None = None,
    ) -> None:
        self._out = out
        self._interval = interval
        self._memory_soft = memory_soft_mb * MIB if memory_soft_mb else None
        self._cpu_soft = cpu_soft * 100.0 if cpu_soft else None
        self._lock = threading.Lock()
        self._next_line = time.monotonic() + interval * 0.95  # the first line after one interval
        self._closed = False
        self.peak_ram = 0
        self.soft_exceeded: set[str] = set()
        self.samples = 0

    def sample(self, cpu_percent: float, ram_bytes: int) -> None:
        with self._lock:
            if self._closed:
                return
            self.peak_ram = max(self.peak_ram, ram_bytes)
            if self._memory_soft is not None and ram_bytes > self._memory_soft:
                self.soft_exceeded.add("memory")
            if self._cpu_soft is not None and cpu_percent > self._cpu_soft:
                self.soft_exceeded.add("cpu")
            now = time.monotonic()
            if now < self._next_line:
                return
            self._next_line = now + self._interval * 0.95  # sampling jitter is not a skip
            self._out.write(line(cpu_percent, ram_bytes / MIB))
            self._out.flush()
            self.samples += 1

    def close(self, cpu_seconds: float | None, wall_seconds: float) -> None:
        """The exit sample: average CPU over the run (``cpu_seconds`` / wall time; 0
        when unknown) and the peak memory seen."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cpu = 100.0 * cpu_seconds / wall_seconds if cpu_seconds and wall_seconds > 0 else 0.0
            extra: dict[str, object] = {"exit": True}
            if self.soft_exceeded:
                extra["soft_limit_exceeded"] = sorted(self.soft_exceeded)
            self._out.write(line(cpu, self.peak_ram / MIB, **extra))
            self._out.flush()
            self.samples += 1
