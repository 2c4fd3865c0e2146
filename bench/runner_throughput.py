"""Runner capture overhead: a pipeline printing N short lines, run by fastflow versus
``python main.py > file`` (same interpreter, same machine, same run).

Prints the wall times and the ratio (goal: <= 1.5).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINES = int(os.environ.get("BENCH_LINES", "1000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))

CODE = f"""
for i in range({LINES}):
    print(f"line {{i}}: some typical log payload text", flush=False)
"""


def _best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> dict[str, float]:
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

        fastflow("empty")  # warm up: database creation and migrations
        base = _best(baseline, REPEAT)
        ff = _best(lambda: fastflow("noisy"), REPEAT)
        startup = _best(lambda: fastflow("empty"), REPEAT)
    ratio = ff / base
    capture_ratio = (ff - startup) / base
    print(
        f"runner capture, {LINES:,} lines: python main.py > file {base:.2f} s, "
        f"fastflow run {ff:.2f} s (of which fixed start-up {startup:.2f} s); "
        f"ratio {ratio:.2f}, without start-up {capture_ratio:.2f} (goal <= 1.5)"
    )
    return {
        "baseline_s": base,
        "fastflow_s": ff,
        "startup_s": startup,
        "ratio": ratio,
        "capture_ratio": capture_ratio,
    }


if __name__ == "__main__":
    main()
