"""Docker executor: container start to first log line, and log capture throughput.

Needs the test daemon of ``tests/dockerd.py`` (started here, or already running; the
benchmark is skipped with a message when dockerd cannot start). Per round, A/B
interleaved (the order alternates), ``BENCH_REPEAT`` (3) rounds; median [min-max] and
the load average are printed:

- start-to-first-line: fastflow's executor (volume + container + start + log stream
  until the first line reaches the capture) vs ``docker run --rm`` of the same image
  until its first line on stdout;
- capture of ``BENCH_DOCKER_LINES`` (1,000,000) lines: fastflow supervising a container
  that prints them (live follow into ``run.log``, from start to the run's end) vs
  ``docker logs`` of the same container afterwards (reading Docker's stored log into a
  file), and fastflow reading that stored log again (the re-attach path) vs the same
  ``docker logs``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
LINES = int(os.environ.get("BENCH_DOCKER_LINES", "100000" if QUICK else "1000000"))
PRINTER = (
    "import sys\n"
    "w = sys.stdout.write\n"
    f"for i in range({LINES}):\n"
    "    w(f'line {i}: some typical log payload text\\n')\n"
)


def _stats(xs: list[float], unit: str = "ms", scale: float = 1000.0, digits: int = 0) -> str:
    v = [x * scale for x in xs]
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}] {unit}"


class _Bench:
    def __init__(self, host: str, image: str, root: Path) -> None:
        from fastflow.config import Settings
        from fastflow.executors.docker import DockerExecutor

        os.environ["DOCKER_HOST"] = host
        self.host, self.image, self.root = host, image, root
        self.settings = Settings(
            data_dir=root / "data", logs_dir=root / "logs", pipelines_dir=root / "pipelines"
        )
        self.executor = DockerExecutor(self.settings)
        self.folder = root / "pipelines" / "bench"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "main.py").write_text(PRINTER)

    def _spec(self, command: tuple[str, ...]) -> Any:
        from fastflow.executors.base import LaunchSpec

        return LaunchSpec(uuid.uuid4(), "bench", self.folder, self.image, command, {}, "none")

    def first_line_fastflow(self) -> float:
        """Seconds from ``start`` to the first line in the sink."""
        from fastflow.executors.base import Watch
        from fastflow.executors.metrics import MetricsFile

        spec = self._spec(("python", "-c", "print('ready', flush=True)"))
        first: list[float] = []
        t0 = time.perf_counter()
        cid = self.executor.start(spec)
        with open(os.devnull, "w") as null:
            self.executor.supervise(
                cid,
                lambda ms, data: first.append(time.perf_counter()) if not first else None,
                MetricsFile(null),
                Watch(),
            )
        self.executor.remove(cid, spec.run_id)
        return first[0] - t0

    def first_line_docker_run(self) -> float:
        command = ["python", "-c", "print('ready', flush=True)"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["docker", "-H", self.host, "run", "--rm", "--network", "none", self.image, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        took = time.perf_counter() - t0
        proc.wait()
        return took

    def capture_fastflow(self, log: Path, handle: str | None = None) -> tuple[float, str, Any]:
        """Run the printer (or re-read ``handle``'s stored log) into ``log`` through the
        capture: (seconds, container id, spec)."""
        from fastflow.executors.base import Watch
        from fastflow.executors.container import FrameClock, _LiveLog
        from fastflow.executors.docker import DEFAULT_COMMAND
        from fastflow.executors.metrics import MetricsFile
        from fastflow.runs.capture import LogCapture

        spec = self._spec(DEFAULT_COMMAND)
        with (
            log.open("w", encoding="utf-8", newline="", buffering=1 << 20) as out,
            open(os.devnull, "w") as null,
        ):
            clock = FrameClock()
            capture = LogCapture(out, clock=clock)
            live = _LiveLog(capture, clock, out)
            t0 = time.perf_counter()
            cid = handle or self.executor.start(spec)
            with live.flushing():
                self.executor.supervise(cid, live.feed, MetricsFile(null), Watch())
            capture.close()
            took = time.perf_counter() - t0
        return took, cid, spec

    def docker_logs(self, cid: str, out: Path) -> float:
        t0 = time.perf_counter()
        with out.open("wb") as f:
            subprocess.run(["docker", "-H", self.host, "logs", cid], stdout=f, check=True)
        return time.perf_counter() - t0


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def main() -> dict[str, Any]:
    from tests.dockerd import DaemonUnavailable, release, start

    load_before = os.getloadavg()
    try:
        daemon = start()
    except DaemonUnavailable as e:
        print(f"docker capture: skipped ({e})", flush=True)
        return {"skipped": str(e)}
    try:
        with tempfile.TemporaryDirectory(prefix="ff-bench-docker-") as tmp:
            return _measure(_Bench(daemon.host, daemon.image, Path(tmp)), Path(tmp), load_before)
    finally:
        release()


def _measure(b: _Bench, tmp: Path, load_before: tuple[float, float, float]) -> dict[str, Any]:
    b.first_line_fastflow()  # warm up: page cache, connection
    b.first_line_docker_run()
    first_ff: list[float] = []
    first_run: list[float] = []
    live: list[float] = []
    reread: list[float] = []
    logs: list[float] = []
    counts_ok = True
    for i in range(REPEAT):
        pair = [("ff", b.first_line_fastflow), ("run", b.first_line_docker_run)]
        for name, fn in pair if i % 2 == 0 else reversed(pair):
            (first_ff if name == "ff" else first_run).append(fn())
        took, cid, spec = b.capture_fastflow(tmp / "live.log")
        live.append(took)
        counts_ok &= _lines(tmp / "live.log") == LINES
        order = ["reread", "logs"] if i % 2 == 0 else ["logs", "reread"]
        for name in order:
            if name == "reread":
                reread.append(b.capture_fastflow(tmp / "reread.log", handle=cid)[0])
                counts_ok &= _lines(tmp / "reread.log") == LINES
            else:
                logs.append(b.docker_logs(cid, tmp / "docker.log"))
                counts_ok &= _lines(tmp / "docker.log") == LINES
        b.executor.remove(cid, spec.run_id)
    med = statistics.median
    result = {
        "lines": LINES,
        "first_line_fastflow_s": first_ff,
        "first_line_docker_run_s": first_run,
        "first_line_ratio": med(first_ff) / med(first_run),
        "live_capture_s": live,
        "reread_s": reread,
        "docker_logs_s": logs,
        "live_ratio": med(live) / med(logs),
        "reread_ratio": med(reread) / med(logs),
        "lines_per_s_live": LINES / med(live),
        "counts_ok": counts_ok,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(
        f"docker capture, {REPEAT} rounds A/B: first line fastflow {_stats(first_ff)} vs "
        f"docker run {_stats(first_run)} (ratio {result['first_line_ratio']:.2f}); "
        f"{LINES:,} lines: live capture {_stats(live, 's', 1, 1)} vs docker logs "
        f"{_stats(logs, 's', 1, 1)} (ratio {result['live_ratio']:.2f}), re-read "
        f"{_stats(reread, 's', 1, 1)} (ratio {result['reread_ratio']:.2f}); counts "
        f"{'OK' if counts_ok else 'MISMATCH'}; load {load_before[0]:.1f}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
