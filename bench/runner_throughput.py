"""Runner capture overhead: a pipeline printing N short lines, run by fastflow versus
``python main.py > file`` (same interpreter, same machine, same run).

Rounds are interleaved (baseline, ``fastflow run``, ``fastflow run`` of an empty pipeline
for the fixed start-up; the order rotates), ``BENCH_REPEAT`` (3) times; prints medians
[min-max] and the per-round ratio (goal: end to end <= 1.5).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from goals import goal, ratios

LINES = int(os.environ.get("BENCH_LINES", "1000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
GOAL = 1.5

CODE = f"""
for i in range({LINES}):
    print(f"line {{i}}: some typical log payload text", flush=False)
"""


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipe_dir = root / "pipelines" / "noisy"
        pipe_dir.mkdir(parents=True)
        (pipe_dir / "main.py").write_text(CODE)
        (root / "pipelines" / "empty").mkdir()
        (root / "pipelines" / "empty" / "main.py").write_text("")
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{root / 'ff.db'}",
            "LOGS_DIR": str(root / "logs"),
            "PIPELINES_DIR": str(root / "pipelines"),
            "DATA_DIR": str(root / "data"),  # environments, not in the working folder
        }
        env.pop("PYTHONUNBUFFERED", None)  # the baseline gets Python's default buffering

        def baseline() -> None:
            with (root / "plain.log").open("wb") as out:
                subprocess.run(
                    [sys.executable, str(pipe_dir / "main.py")],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    check=True,
                )

        def fastflow(name: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "fastflow", "run", name],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        fastflow("empty")  # warm up: database creation, migrations, environments
        fastflow("noisy")
        load = os.getloadavg()
        steps: dict[str, Callable[[], None]] = {
            "baseline": baseline,
            "fastflow": lambda: fastflow("noisy"),
            "startup": lambda: fastflow("empty"),
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for rnd in range(REPEAT):
            names = list(steps)
            names = names[rnd % 3 :] + names[: rnd % 3]
            for name in names:
                times[name].append(_timed(steps[name]))
    ratio = ratios(times["fastflow"], times["baseline"])
    capture = [
        (f - s) / b
        for f, s, b in zip(times["fastflow"], times["startup"], times["baseline"], strict=True)
    ]
    print(
        f"runner capture, {LINES:,} lines, {REPEAT} interleaved rounds (load {load[0]:.1f}): "
        f"python main.py > file {_spread(times['baseline'])} s, fastflow run "
        f"{_spread(times['fastflow'])} s (fixed start-up {_spread(times['startup'])} s); "
        f"ratio {_spread(ratio)} (goal <= {GOAL:g}), without start-up {_spread(capture)}"
    )
    return {
        "times": times,
        "baseline_s": statistics.median(times["baseline"]),
        "fastflow_s": statistics.median(times["fastflow"]),
        "startup_s": statistics.median(times["startup"]),
        "ratio": statistics.median(ratio),
        "capture_ratio": statistics.median(capture),
        "goals": [
            goal(f"`fastflow run` of {LINES:,} lines vs `python main.py > file`", ratio, "<=", GOAL)
        ],
    }


if __name__ == "__main__":
    main()
