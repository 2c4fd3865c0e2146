"""Run every benchmark, each in its own subprocess, and print one Markdown summary table.

``make bench`` runs this. ``BENCH_QUICK=1`` shrinks every size (100k runner lines, 300
cleanup runs, a 20 MiB log, 50k planning runs, 10k integrity entries, a 64 MiB log and
100 archived logs to search, 50k runs for the dashboards) for a smoke run (~30 s on an idle
2-CPU box). The per-script variables (``BENCH_LINES``, ``BENCH_RUNS``, ``BENCH_SIZES_MB``,
``BENCH_PLAN_RUNS``, ``BENCH_INTEGRITY_ENTRIES``, ``BENCH_SEARCH_MB``,
``BENCH_STATS_RUNS``, ...) still win over both defaults.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
QUICK = os.environ.get("BENCH_QUICK") == "1"
SCRIPTS = (
    "runner_throughput",
    "cleanup_throughput",
    "archive_rss",
    "planning",
    "archive_read",
    "load",
    "envs",
    "api_archived_tail",
    "cli_startup",
    "integrity",
    "log_search",
    "stats",
    "api_runs_ceiling",
    "docker_capture",
    "notify_after_run",
)
QUICK_ENV = {"BENCH_LINES": "100000"}  # runner_throughput has no quick mode of its own

_CHILD = (
    "import importlib, json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "result = importlib.import_module(sys.argv[2]).main()\n"
    "with open(sys.argv[3], 'w') as f:\n"
    "    json.dump(result, f, default=str)\n"
)


def _run(name: str) -> tuple[dict[str, Any] | None, float, str | None]:
    """Run ``bench/<name>.py``'s ``main()`` in a subprocess: (result, seconds, error)."""
    env = dict(os.environ)
    if QUICK:
        for key, value in QUICK_ENV.items():
            env.setdefault(key, value)
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        out = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(BENCH_DIR), name, str(out)],
            env=env,
            cwd=str(REPO_ROOT),
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            return None, elapsed, f"failed (exit status {proc.returncode})"
        result: dict[str, Any] = json.loads(out.read_text())
    return result, elapsed, None


def _machine() -> str:
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs, {ram_gib:.1f} GiB RAM, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}"
    )


# --- one formatter per script: rows of (benchmark, figure, value) --------------------------

Row = tuple[str, str, str]


def _runner_rows(r: dict[str, Any]) -> list[Row]:
    lines = os.environ.get("BENCH_LINES", QUICK_ENV["BENCH_LINES"] if QUICK else "1000000")
    t = r["times"]
    return [
        (
            f"runner capture ({int(lines):,} lines)",
            "`python main.py > file` / `fastflow run` / its fixed start-up",
            f"{_spread(t['baseline'], '.2f')} / {_spread(t['fastflow'], '.2f')} / "
            f"{_spread(t['startup'], '.2f')} s",
        ),
        ("", "capture alone (without start-up) vs baseline", f"{r['capture_ratio']:.2f}"),
    ]


def _spread(xs: list[float], fmt: str = ",.1f") -> str:
    s = sorted(xs)
    return f"{s[len(s) // 2]:{fmt}} [{s[0]:{fmt}}-{s[-1]:{fmt}}]"


def _cleanup_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for server in ("moto", "s3rver"):
        v = r.get(server)
        if v is None:
            continue
        if "skipped" in v:
            rows.append((f"cleanup pass on {server}", "", v["skipped"]))
            continue
        for size in ("small", "large"):
            m = v[size]
            label = "~20 KB" if m["log_bytes"] is None else f"{m['log_bytes'] >> 20} MB"
            rates, cpu = m["rates"], m["cpu_ms_per_run"]
            rows += [
                (
                    f"cleanup pass on {server}, {m['runs']:,} runs x ({label} log + metrics)",
                    "runs/s: fastflow / sequential / 16-thread pool (median [min-max])",
                    f"{_spread(rates['fastflow'])} / {_spread(rates['sequential'])} / "
                    f"{_spread(rates['pool'])}",
                ),
                *(
                    [
                        (
                            "",
                            "runs/s: 16-thread pool verifying by the PUT's ETag (no HEAD)",
                            f"{_spread(rates['pool_etag'])} "
                            f"(fastflow / it: {_spread(m['ratio_vs_pool_etag'], '.2f')})",
                        )
                    ]
                    if "pool_etag" in rates
                    else []
                ),
                (
                    "",
                    "client CPU per run: fastflow / sequential",
                    f"{_spread(cpu['fastflow'], '.2f')} / {_spread(cpu['sequential'], '.2f')} ms",
                ),
                (
                    "",
                    "archived = deleted = due, 0 failures",
                    "OK" if m["counts_ok"] else "MISMATCH",
                ),
            ]
    return rows


def _rss_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        (
            "archive peak RSS",
            "baseline child (imports + 1-byte upload)",
            f"{r['baseline_peak_rss_mib']:.0f} MiB",
        )
    ]
    for size, v in r["sizes"].items():
        label = f"{int(size):,} MiB log"
        if "skipped" in v:
            rows.append(("", label, v["skipped"]))
        else:
            rows.append(
                (
                    "",
                    label,
                    f"peak {v['peak_rss_mib']:.0f} MiB, delta {v['delta_mib']:+.0f} MiB "
                    f"({v['mib_per_s']:.0f} MiB/s)",
                )
            )
    if "delta_spread_mib" in r:
        rows.append(
            ("", "delta spread across sizes (flat ~ 0)", f"{r['delta_spread_mib']:.0f} MiB")
        )
    return rows


def _planning_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        v = r.get(key, {})
        title = f"planning, {label} ({r['runs']:,} runs)"
        if "skipped" in v:
            rows.append((title, "", v["skipped"]))
            continue
        counts = "OK" if v["counts_ok"] else "MISMATCH"
        t, g = v["times"], v["rss_growth_mib"]
        rows += [
            (
                title,
                "plan seconds: fastflow / hand-written DB-API planner",
                f"{_spread(t['fastflow'], '.2f')} / {_spread(t['hand'], '.2f')} s",
            ),
            (
                "",
                "peak RSS growth: fastflow / hand-written",
                f"{_spread(g['fastflow'], '+.1f')} / {_spread(g['hand'], '+.1f')} MiB",
            ),
            (
                "",
                "actions: deletions + truncations (same ids as the hand-written planner)",
                f"{v['deletions']:,} + {v['truncations']:,} {counts}",
            ),
            (
                "",
                "steady state (~50 candidates per pipeline)",
                f"{v['steady_s']:.2f} s for {v['steady_actions']:,} actions",
            ),
            ("", "dry-run pass (plan streamed)", f"{v['dry_run_s']:.2f} s"),
        ]
    return rows


def _read_rows(r: dict[str, Any]) -> list[Row]:
    title = f"archived-log reads ({r['size_mb']} MiB log)"
    rows: list[Row] = [
        (title, "tail 200 KB from local disk (baseline)", f"{r['local_tail_ms']:.1f} ms")
    ]
    for codec, v in r["codecs"].items():
        rows.append(
            (
                "",
                f"{codec}: ratio, compress speed",
                f"{v['ratio']:.1f}x, {v['compress_mb_s']:.0f} MiB/s",
            )
        )
        rows.append(
            (
                "",
                f"{codec}: archive (compress + upload + verify), tail read",
                f"{v['archive_s']:.2f} s, {v['tail_ms']:.1f} ms",
            )
        )
    return rows


def _load_rows(r: dict[str, Any]) -> list[Row]:
    title = (
        f"API under load ({r['clients']} clients every {r['interval_s']:g} s, "
        f"{r['seconds']:g} s, pass over {r['runs']:,} runs)"
    )
    return [
        (title, "requests, errors", f"{r['requests']:,} ({r['rps']:.0f}/s), {r['errors']}"),
        (
            "",
            "latency p50 / p95 / p99 (goal p99 < 200 ms)",
            f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} ms",
        ),
        (
            "",
            "pass with load vs without",
            f"{r['pass_loaded_s']:.1f} s vs {r['pass_quiet_s']:.1f} s "
            f"({r['archived_loaded']} archived, {r['failures_loaded']} failures)",
        ),
    ]


def _envs_rows(r: dict[str, Any]) -> list[Row]:
    start, build = r["startup"], r["build"]

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    return [
        (
            "pipeline environments (uv)",
            "run start-up: cached env vs direct interpreter",
            f"{start['ratio']:.2f} ({med(start['env_ms']):.1f} ms vs "
            f"{med(start['direct_ms']):.1f} ms; prepare() {start['prepare_ms_median']:.1f} ms)",
        ),
        (
            "",
            "env build vs plain `uv venv` + `uv pip install -r`",
            f"{build['ratio']:.2f} ({med(build['fastflow_ms']):.0f} ms vs "
            f"{med(build['uv_ms']):.0f} ms)",
        ),
    ]


def _tail_rows(r: dict[str, Any]) -> list[Row]:
    def spread(xs: list[float]) -> str:
        s = sorted(xs)
        return f"{s[len(s) // 2]:.0f} [{s[0]:.0f}-{s[-1]:.0f}]"

    verdict = "PASS" if r["pass"] else "FAIL"
    return [
        (
            f"archived log tail via API ({r['clients']} clients, 64 KiB)",
            f"req/s API vs shared-client ranged GET (goal >= {r['goal']}x)",
            f"{r['ratio']:.2f} {verdict} ({spread(r['api_rps'])} vs {spread(r['base_rps'])})",
        ),
        (
            "",
            "latency p50 / p99 API (baseline p50)",
            f"{r['api_p50_ms']:.0f} / {r['api_p99_ms']:.0f} ms ({r['base_p50_ms']:.0f} ms)",
        ),
    ]


def _cli_rows(r: dict[str, Any]) -> list[Row]:
    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    verdict = "PASS" if r["pass"] else "FAIL"
    return [
        (
            "CLI start-up",
            f"`fastflow --help` vs `python -c 'import click'` (goal <= {r['goal']:g}x)",
            f"{r['ratio']:.2f} {verdict} "
            f"({med(r['help_ms']):.0f} ms vs {med(r['click_ms']):.0f} ms)",
        ),
        ("", "`fastflow runs --json` (opens the database)", f"{med(r['runs_ms']):.0f} ms"),
        ("", "`fastflow run` of a one-line pipeline", f"{med(r['run_ms']):.0f} ms"),
    ]


def _integrity_rows(r: dict[str, Any]) -> list[Row]:
    verdict = "OK" if r["verify_ok"] and r["rebuild_ok"] else "MISMATCH"
    return [
        (
            f"integrity ({r['entries']:,} ledger entries, {r['manifests']} manifests)",
            "`archive verify --manifests`: time, entries/s, peak RSS",
            f"{r['verify_s']:.1f} s, {r['verify_entries_per_s']:,.0f}/s, "
            f"{r['verify_rss_mib']:.0f} MiB {verdict}",
        ),
        (
            "",
            "`archive rebuild-index` (empty database): time, entries/s, peak RSS",
            f"{r['rebuild_s']:.1f} s, {r['rebuild_entries_per_s']:,.0f}/s, "
            f"{r['rebuild_rss_mib']:.0f} MiB",
        ),
        (
            "",
            "ratio vs download + SHA-256 of every manifest (baseline child)",
            f"verify {r['verify_ratio']:.1f}x, rebuild {r['rebuild_ratio']:.1f}x "
            f"({r['baseline_s']:.1f} s, {r['baseline_rss_mib']:.0f} MiB)",
        ),
    ]


def _search_rows(r: dict[str, Any]) -> list[Row]:
    def spread(xs: list[float], digits: int = 0) -> str:
        s = sorted(xs)
        return f"{s[len(s) // 2]:.{digits}f} [{s[0]:.{digits}f}-{s[-1]:.{digits}f}]"

    local, archived = r["local"], r["archived"]
    ok = "OK" if local["counts_ok"] and archived["counts_ok"] else "MISMATCH"
    return [
        (
            f"log search, local {local['mb']:,} MiB log",
            "MB/s fastflow vs `grep -c` (ratio)",
            f"{spread(local['fastflow_mb_s'])} vs {spread(local['grep_mb_s'])} "
            f"({local['ratio']:.2f})",
        ),
        (
            "",
            "case-insensitive (the default) vs `grep -ci` (ratio)",
            f"{spread(local['fastflow_ci_mb_s'])} vs {spread(local['grep_ci_mb_s'])} "
            f"({local['ratio_ci']:.2f})",
        ),
        (
            f"log search, {archived['runs']:,} archived 1 MiB logs",
            "`fastflow search` vs sequential download + `grep -c` (speed-up)",
            f"{archived['ratio']:.2f}x ({spread(archived['fastflow_s'], 1)} s vs "
            f"{spread(archived['baseline_s'], 1)} s)",
        ),
        ("", "match counts equal to grep's", ok),
    ]


def _stats_rows(r: dict[str, Any]) -> list[Row]:
    def spread(v: dict[str, float]) -> str:
        return f"{v['median_ms']:.1f} [{v['min_ms']:.1f}-{v['max_ms']:.1f}] ms"

    rows: list[Row] = []
    for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        v = r.get(key, {})
        title = f"dashboards, {label} ({r['runs']:,} runs over {r['days']} days)"
        if "skipped" in v:
            rows.append((title, "", v["skipped"]))
            continue
        verdict = "PASS" if v["goal_ok"] else "FAIL"
        rows += [
            (
                title,
                "`/api/stats/overview?days=14`, ratio vs plain `GROUP BY` (goal < 100 ms)",
                f"{spread(v['overview'])}, {v['overview_ratio']:.3f} {verdict}",
            ),
            (
                "",
                "`/api/pipelines/{name}/stats?days=30`, ratio vs plain `GROUP BY`",
                f"{spread(v['pipeline'])}, {v['pipeline_ratio']:.3f}",
            ),
            ("", "plain `GROUP BY date(started_at), status` (baseline)", spread(v["baseline"])),
        ]
    return rows


def _ceiling_rows(r: dict[str, Any]) -> list[Row]:
    return [
        (
            f"`/api/runs?limit=50`, {r['clients']} connections (wrk)",
            "p99: API / static route with the same JSON",
            f"{_spread(r['p99_ms']['api'], '.0f')} / {_spread(r['p99_ms']['static'], '.0f')} ms",
        ),
        (
            "",
            "req/s: API / static route (errors)",
            f"{_spread(r['rps']['api'], '.0f')} / {_spread(r['rps']['static'], '.0f')} "
            f"({r['errors']})",
        ),
    ]


def _docker_rows(r: dict[str, Any]) -> list[Row]:
    if "skipped" in r:
        return [("Docker executor", "", f"skipped: {r['skipped']}")]
    ok = "OK" if r["counts_ok"] else "MISMATCH"
    return [
        (
            "Docker executor",
            "start to first log line: fastflow vs `docker run` (ratio)",
            f"{_spread([x * 1000 for x in r['first_line_fastflow_s']], '.0f')} vs "
            f"{_spread([x * 1000 for x in r['first_line_docker_run_s']], '.0f')} ms "
            f"({r['first_line_ratio']:.2f})",
        ),
        (
            f"Docker capture ({r['lines']:,} lines)",
            "live capture (start to end) vs `docker logs` of the same container (ratio)",
            f"{_spread(r['live_capture_s'])} vs {_spread(r['docker_logs_s'])} s "
            f"({r['live_ratio']:.2f}; {r['lines_per_s_live']:,.0f} lines/s)",
        ),
        (
            "",
            "re-reading the stored log (re-attach path) vs `docker logs` (ratio)",
            f"{_spread(r['reread_s'])} s ({r['reread_ratio']:.2f}); line counts {ok}",
        ),
    ]


def _notify_rows(r: dict[str, Any]) -> list[Row]:
    t = r["times_ms"]
    return [
        (
            "a successful run's notification step (`notify.after_run`)",
            "with the recovery re-send check vs `on_recovery: false` (ratio)",
            f"{_spread(t['with'], '.3f')} vs {_spread(t['without'], '.3f')} ms "
            f"({_spread(r['ratio'], '.2f')})",
        )
    ]


FORMATTERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "notify_after_run": _notify_rows,
    "docker_capture": _docker_rows,
    "api_runs_ceiling": _ceiling_rows,
    "stats": _stats_rows,
    "log_search": _search_rows,
    "integrity": _integrity_rows,
    "cli_startup": _cli_rows,
    "api_archived_tail": _tail_rows,
    "envs": _envs_rows,
    "archive_read": _read_rows,
    "load": _load_rows,
    "runner_throughput": _runner_rows,
    "cleanup_throughput": _cleanup_rows,
    "archive_rss": _rss_rows,
    "planning": _planning_rows,
}


def _table(rows: list[Row]) -> str:
    out = ["| benchmark | figure | value |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def main() -> dict[str, Any]:
    from goals import table

    results: dict[str, Any] = {}
    rows: list[Row] = []
    goals: list[dict[str, Any]] = []
    failed = []
    # fastflow's bytecode cache, as an installed package has it (``make bytecode``): where
    # PYTHONDONTWRITEBYTECODE is set, every command would compile its sources again
    compileall.compile_dir(str(REPO_ROOT / "src" / "fastflow"), quiet=1)
    machine = _machine()  # load average before the first benchmark
    total0 = time.perf_counter()
    for name in SCRIPTS:
        print(f"== {name}{' (quick)' if QUICK else ''}", flush=True)
        result, elapsed, error = _run(name)
        results[name] = result if result is not None else {"error": error}
        if result is None:
            failed.append(name)
            rows.append((name, "", error or "failed"))
            continue
        goals += result.get("goals", [])
        try:
            rows += FORMATTERS[name](result)
        except (KeyError, TypeError, ValueError) as e:
            rows.append((name, "", f"unexpected result ({type(e).__name__}: {e})"))
        print(f"   ({elapsed:.1f} s)", flush=True)
    total = time.perf_counter() - total0
    print()
    print(
        f"Machine: {machine} (at start; now {', '.join(f'{x:.1f}' for x in os.getloadavg())})."
        f" Total {total:.0f} s{' (BENCH_QUICK=1)' if QUICK else ''}."
    )
    print()
    print(_table(rows))
    print()
    print(table(goals))
    results["goals"] = goals
    results["machine"] = machine
    results["total_s"] = total
    results["failed"] = failed
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
