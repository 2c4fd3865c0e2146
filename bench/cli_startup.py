"""CLI start-up: ``fastflow --help`` and ``fastflow runs --json`` vs ``python -c "import click"``.

Issue 14's goal: ``fastflow --help`` <= 3x the interpreter start-up plus importing click
(what any click CLI pays). A/B interleaved with rotating order, ``BENCH_REPEAT`` (3)
rounds of ``BENCH_STARTS`` (10) starts each; median [min-max] per start and the load
average are printed. ``fastflow runs --json`` on an empty SQLite database is shown too
(a command that opens the database: settings, SQLAlchemy, migrations check).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from goals import goal, instance_env, ratios

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
STARTS = int(os.environ.get("BENCH_STARTS", "10"))
GOAL = 3.0


def _time(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds per start, averaged over ``STARTS`` starts."""
    t0 = time.perf_counter()
    for _ in range(STARTS):
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
    return (time.perf_counter() - t0) / STARTS


def _stats(xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"{statistics.median(ms):.0f} [{min(ms):.0f}-{max(ms):.0f}] ms"


def main() -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ff-bench-cli-") as tmp:
        root = Path(tmp)
        env = instance_env(root)
        (root / "pipelines" / "hello").mkdir(parents=True)
        (root / "pipelines" / "hello" / "main.py").write_text("print('hi')\n")
        fastflow = [sys.executable, "-m", "fastflow"]
        commands = {
            "help": [*fastflow, "--help"],
            "runs": [*fastflow, "runs", "--json"],
            "run": [*fastflow, "run", "hello"],
            "click": [sys.executable, "-c", "import click"],
        }
        _time(commands["runs"], env)  # creates and migrates the database once
        _time(commands["run"], env)  # builds the pipeline's environment once
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(REPEAT):
            names = list(commands)
            if i % 2:
                names.reverse()
            for name in names:
                times[name].append(_time(commands[name], env))
    ratio = statistics.median(times["help"]) / statistics.median(times["click"])
    result = {
        "help_ms": [x * 1000 for x in times["help"]],
        "runs_ms": [x * 1000 for x in times["runs"]],
        "run_ms": [x * 1000 for x in times["run"]],
        "click_ms": [x * 1000 for x in times["click"]],
        "ratio": ratio,
        "goal": GOAL,
        "pass": ratio <= GOAL,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "goals": [
            goal(
                "`fastflow --help` vs `python -c 'import click'`",
                ratios(times["help"], times["click"]),
                "<=",
                GOAL,
            )
        ],
    }
    print(
        f"CLI start-up, {REPEAT} x {STARTS} starts A/B: fastflow --help {_stats(times['help'])}; "
        f"fastflow runs --json {_stats(times['runs'])}; fastflow run (one-line pipeline, "
        f"cached env) {_stats(times['run'])}; python -c 'import click' "
        f"{_stats(times['click'])}; ratio help/click {ratio:.2f} (goal <= {GOAL:g}: "
        f"{'PASS' if result['pass'] else 'FAIL'}); load {load_before[0]:.1f}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
