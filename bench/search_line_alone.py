"""A regular expression that can see past its line (``\\A``, a lookbehind) is matched on
each line alone; any other is matched on whole 1 MiB blocks. What that costs: the same
hits of ``\\A\\[2026`` (each line alone) against ``^\\[2026`` (blocks) over a synthetic
log of ``BENCH_SEARCH_MB`` (20) MB, A/B/A/B with rotating order, ``BENCH_REPEAT`` (3)
rounds; median [min-max] and the load average are printed. Not a goal of issue 14."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "src", REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from goals import ratios, spread  # noqa: E402

from fastflow.runs import logsearch  # noqa: E402

MB = int(os.environ.get("BENCH_SEARCH_MB", "20"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _log() -> bytes:
    line = b"[2026-01-01 00:00:00.000] step %d of a job that logs a fairly ordinary line\n"
    other = b"  continued output without a stamp %d\n"
    out, size, i = [], 0, 0
    while size < MB << 20:
        piece = (line if i % 3 else other) % i
        out.append(piece)
        size += len(piece)
        i += 1
    return b"".join(out)


def _time(data: bytes, pattern: str) -> tuple[float, int]:
    matcher = logsearch.Matcher(pattern, is_regex=True)
    t0 = time.perf_counter()
    hits = sum(1 for _ in logsearch.search([data], matcher, max_hits=10**9))
    return time.perf_counter() - t0, hits


def main() -> None:
    load = os.getloadavg()[0]
    data = _log()
    times: dict[str, list[float]] = {"alone": [], "blocks": []}
    counts: dict[str, int] = {}
    cases = [("alone", r"\A\[2026"), ("blocks", r"^\[2026")]
    for i in range(REPEAT):
        for name, pattern in cases if i % 2 == 0 else cases[::-1]:
            seconds, counts[name] = _time(data, pattern)
            times[name].append(seconds)
    assert counts["alone"] == counts["blocks"], counts
    print(
        f"regex search, {MB} MB, {counts['alone']:,} hits: "
        f"each line alone {spread(times['alone'])} s, blocks {spread(times['blocks'])} s; "
        f"ratio {spread(ratios(times['alone'], times['blocks']))}; "
        f"load {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
