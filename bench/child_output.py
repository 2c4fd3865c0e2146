"""The pipeline-side cost of fastflow's output layer (``runs.bootstrap``): a pipeline
run under fastflow's bootstrap versus ``python main.py``, both writing into one pipe
that this process drains (what the runner does), for three workloads — ``print`` to
standard output, ``print`` to standard error, ``logging`` records.

Rounds are interleaved (baseline, bootstrap; the order alternates), ``BENCH_REPEAT`` (3)
times; prints medians [min-max] and per-round ratios. ``BENCH_CHILD_BOOTSTRAP=FILE``
times the bootstrap in FILE instead (e.g. an older commit's, for an A/B of two layers).
The layer runs twice per round: as ``fastflow run`` starts it (stderr framed, so the
runner can mask each stream on its own) and without the mark (stderr unframed).
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

from goals import ratios

LAYER = "fastflow's layer"
UNFRAMED = "layer, stderr unframed"
MARK = {"FASTFLOW_OUTPUT_MARK": "0123abcd"}
# Python's default buffering for the baseline (as a pipeline run by hand gets it)
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
LINES = int(os.environ.get("BENCH_LINES", "1000000"))

WORKLOADS = {
    "print to stdout": f"for i in range({LINES}):\n    print(f'line {{i}}: a typical payload')\n",
    "print to stderr": (
        "import sys\n"
        f"for i in range({LINES // 5}):\n"
        "    print(f'line {i}: a typical payload', file=sys.stderr)\n"
    ),
    "logging records": (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')\n"
        "log = logging.getLogger('etl')\n"
        f"for i in range({LINES // 5}):\n"
        "    log.info('processed batch %d of a typical payload', i)\n"
    ),
}


def _bootstrap() -> str:
    chosen = os.environ.get("BENCH_CHILD_BOOTSTRAP")
    if chosen:
        return Path(chosen).read_text()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from fastflow.runs.bootstrap import bootstrap

    return bootstrap()


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**BASE_ENV, **env}
    )
    assert proc.stdout is not None
    while proc.stdout.read(256 * 1024):
        pass
    if proc.wait() != 0:
        raise SystemExit(f"{argv[:2]} failed with exit status {proc.returncode}")
    return time.perf_counter() - t0


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main() -> dict[str, Any]:
    code = _bootstrap()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        for name, body in WORKLOADS.items():
            script = Path(tmp) / "main.py"
            script.write_text(body)
            layer = [sys.executable, "-c", code, str(script)]
            argv = {
                "python main.py": ([sys.executable, str(script)], {}),
                LAYER: (layer, MARK),
                UNFRAMED: (layer, {}),
            }
            times: dict[str, list[float]] = {k: [] for k in argv}
            for rnd in range(REPEAT):
                order = list(argv)[rnd % 3 :] + list(argv)[: rnd % 3]  # rotating order
                for k in order:
                    times[k].append(_timed(*argv[k]))
            ratio = ratios(times[LAYER], times["python main.py"])
            framing = ratios(times[LAYER], times[UNFRAMED])
            print(
                f"{name}: python main.py {_spread(times['python main.py'])} s, "
                f"fastflow's layer {_spread(times[LAYER])} s "
                f"(stderr unframed {_spread(times[UNFRAMED])} s); "
                f"ratio {_spread(ratio)}, framed/unframed {_spread(framing)} "
                f"({REPEAT} interleaved rounds, load {load:.1f})"
            )
            results[name] = {
                "times": times,
                "ratio": statistics.median(ratio),
                "framing": statistics.median(framing),
            }
    return results


if __name__ == "__main__":
    main()
