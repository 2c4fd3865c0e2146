"""What holding a run's file costs: the read an upload makes, through ``runs.files.held``
(a walk from ``LOGS_DIR`` that follows no link, the file read through
``/proc/self/fd/N``, its identity from the descriptor and its name checked again
through the folder) against the same read by path (identity by ``stat`` before and
after) — ``BENCH_HELD_FILES`` (2,000) files of 20 KB, A/B interleaved with rotating
order, ``BENCH_REPEAT`` (3; at least 3) rounds; µs per file as median [min-max], the
ratio per round and the load average. Not a goal of issue 14: the price of a security
guarantee, to set beside the pass's ~13 ms of client CPU per run.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

from fastflow.runs import files  # noqa: E402

FILES = int(os.environ.get("BENCH_HELD_FILES", "2000"))
REPEAT = max(3, int(os.environ.get("BENCH_REPEAT", "3")))


def _by_path(paths: list[Path], root: Path) -> None:
    for p in paths:
        before = files.FileIdentity.of(p)
        with open(p, "rb") as f:
            f.read()
        if files.FileIdentity.of(p) != before:
            raise RuntimeError("changed")


def _held(paths: list[Path], root: Path) -> None:
    for p in paths:
        with files.held(root, files.rel_below(root, p)) as h:
            before = h.identity()
            with open(h.path, "rb") as f:
                f.read()
            if h.named() != before:
                raise RuntimeError("changed")


def main() -> dict[str, Any]:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ff-bench-held-") as tmp:
        root = Path(tmp) / "logs"
        paths = []
        for i in range(FILES):
            folder = root / "p" / f"run-{i:05d}"
            folder.mkdir(parents=True)
            (folder / "run.log").write_bytes(os.urandom(20_000))
            paths.append(files.resolve(root, f"p/run-{i:05d}/run.log"))
        cases: dict[str, Callable[[list[Path], Path], None]] = {
            "path": _by_path,
            "held": _held,
        }
        us: dict[str, list[float]] = {"path": [], "held": []}
        for rnd in range(REPEAT):
            order = ["path", "held"] if rnd % 2 == 0 else ["held", "path"]
            for name in order:
                t0 = time.perf_counter()
                cases[name](paths, root)
                us[name].append((time.perf_counter() - t0) / FILES * 1e6)
    ratio = [h / p for h, p in zip(us["held"], us["path"], strict=True)]

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"

    print(
        f"reading a held 20 KB file, {FILES:,} files, {REPEAT} interleaved rounds: held "
        f"{spread(us['held'])} µs, by path {spread(us['path'])} µs per file; ratio "
        f"{spread(ratio)}; load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    return {"held_us": us["held"], "path_us": us["path"], "ratio": ratio}


if __name__ == "__main__":
    main()
