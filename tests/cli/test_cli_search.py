"""``fastflow logs RUN --grep/--follow`` and ``fastflow search``, run as real subprocesses
against local logs and logs archived (plain and zstd) to the S3 test server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import store
from tests.conftest import MakePipeline, run_cli, wait_until
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, ledger, seed_run

ERRORS = (4, 5, 12)
LOG = b"".join(
    f"[2026-01-01 00:00:00.{i:03d}] step {i}{' ERROR disk full' if i in ERRORS else ''}\n".encode()
    for i in range(1, 21)
)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


def test_logs_grep_prints_like_grep(app: Context) -> None:
    run = seed_run(app, "etl", NOW, log=LOG)
    short = str(run.id)[:8]
    res = run_cli("logs", short, "--grep", "error", env=_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "[2026-01-01 00:00:00.004] step 4 ERROR disk full",
        "[2026-01-01 00:00:00.005] step 5 ERROR disk full",
        "[2026-01-01 00:00:00.012] step 12 ERROR disk full",
    ]
    assert "3 matching lines (text, case-insensitive)" in res.stderr
    res = run_cli("logs", short, "--grep", "error", "-C", "1", "-n", env=_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "3-[2026-01-01 00:00:00.003] step 3",
        "4:[2026-01-01 00:00:00.004] step 4 ERROR disk full",
        "5:[2026-01-01 00:00:00.005] step 5 ERROR disk full",
        "6-[2026-01-01 00:00:00.006] step 6",
        "--",
        "11-[2026-01-01 00:00:00.011] step 11",
        "12:[2026-01-01 00:00:00.012] step 12 ERROR disk full",
        "13-[2026-01-01 00:00:00.013] step 13",
    ]
    res = run_cli("logs", short, "--grep", r"step 1\d$", "--regex", "-n", env=_env())
    assert res.stdout.splitlines()[0] == "10:[2026-01-01 00:00:00.010] step 10"
    assert len(res.stdout.splitlines()) == 9  # 10, 11, 13 .. 19 (12 has more after it)
    res = run_cli("logs", short, "--grep", "error", "--case-sensitive", env=_env())
    assert res.returncode == 1 and res.stdout == ""
    assert "0 matching lines" in res.stderr
    res = run_cli("logs", short, "--grep", "step (1", env=_env())
    assert res.returncode == 1 and "hint: add --regex" in res.stderr
    res = run_cli("logs", short, "--grep", "step (1", "--regex", env=_env())
    assert res.returncode == 2
    assert res.stderr.strip().startswith("fastflow: invalid regular expression")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = run_cli("logs", short, "-n", env=_env())
    assert res.returncode == 2 and "go with --grep" in res.stderr


def test_logs_grep_stops_a_pathological_regex(app: Context) -> None:
    run = seed_run(app, "etl", NOW, log=b"fine\n" * 10 + b"a" * 40 + b"!\n")
    res = run_cli("logs", str(run.id), "--grep", "(a|aa)+$", "--regex", env=_env(), timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "fastflow: the regular expression '(a|aa)+$' took longer than 1 s on line 11; "
        "simplify it (nested repeats such as (a+)+ or (a|aa)+ backtrack exponentially)"
    )


TICKER = """\
import sys, time
for i in range(40):
    print("tick %03d" % i, flush=True)
    time.sleep(0.05)
sys.exit(CODE)
"""


@pytest.mark.parametrize(("code", "status", "exit_status"), [(0, "SUCCESS", 0), (3, "FAILED", 1)])
def test_logs_follow_prints_a_running_log_to_its_end(
    app: Context, make_pipeline: MakePipeline, code: int, status: str, exit_status: int
) -> None:
    make_pipeline("ticker", TICKER.replace("CODE", str(code)))
    runner = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "run", "ticker"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found: list[PipelineRun] = []

        def started() -> bool:
            found[:] = store.list_runs(app.db, pipeline="ticker", status="RUNNING")
            return bool(found)

        wait_until(started, 60, "the run to start")
        res = run_cli("logs", str(found[0].id)[:8], "--follow", env=_env(), timeout=120)
    finally:
        runner.wait(timeout=120)
    assert res.returncode == exit_status, res.stderr
    ticks = [line.split("] ", 1)[1] for line in res.stdout.splitlines() if "] tick " in line]
    assert ticks == [f"tick {i:03d}" for i in range(40)]
    row = store.get(app.db, found[0].id)
    assert row is not None and row.log_file is not None
    assert res.stdout == (app.settings.logs_root / row.log_file).read_text()
    assert f": {status}, exit code {code}" in res.stderr.splitlines()[-1]


# --- fastflow search ----------------------------------------------------------------------


@pytest.fixture
def corpus(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """12 runs of two pipelines, 8 of them archived (4 plain, 4 zstd), needles in some."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    runs = []
    for p, (pipeline, codec) in enumerate((("alpha", "none"), ("beta", "zstd"))):
        for i in range(6):
            started = NOW - timedelta(days=6 - i, hours=p)
            needle = f"the NEEDLE {pipeline}{i}" if i % 2 == 0 else "nothing here"
            log = f"[2026-01-01 00:00:00.000] start\n[2026-01-01 00:00:00.001] {needle}\n"
            runs.append((seed_run(ctx, pipeline, started, log=log.encode()), started, needle))
        data = ctx.settings.model_dump()
        data.update(log_retention_runs=2, s3_compression=codec)
        run_pass(Context(settings=load_settings(**data), db=ctx.db), "test", now=NOW)
    assert sum(1 for e in ledger(ctx).values() if e.local_deleted_at) == 8
    yield runs
    ctx.db.dispose()


def _expected(runs: list[Any]) -> list[dict[str, Any]]:
    hits = [
        {
            "run_id": str(run.id),
            "pipeline_name": run.pipeline,
            "started_at": started.isoformat(),
            "line": 2,
            "text": f"[2026-01-01 00:00:00.001] {needle}",
        }
        for run, started, needle in runs
        if "NEEDLE" in needle
    ]
    return sorted(hits, key=lambda h: h["started_at"], reverse=True)


def test_search_prints_matches_newest_first(corpus: list[Any]) -> None:
    expected = _expected(corpus)
    res = run_cli("search", "needle", "--json", env=_env())
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == expected
    assert "6 matching lines in 6 runs; 12 runs searched (8 read from the archive" in res.stderr
    res = run_cli("search", "needle", env=_env())
    assert res.stdout.splitlines() == [
        f"{h['pipeline_name']}/{h['run_id'][:8]}:2:{h['text']}" for h in expected
    ]
    res = run_cli("search", "NEEDLE beta", "--pipeline", "beta", "--json", env=_env())
    assert [json.loads(x)["pipeline_name"] for x in res.stdout.splitlines()] == ["beta"] * 3
    since = (NOW - timedelta(days=4, hours=1)).isoformat()
    until = (NOW - timedelta(days=1)).date().isoformat()  # a day: included
    res = run_cli("search", "needle", "--since", since, "--until", until, "--json", env=_env())
    got = [json.loads(x) for x in res.stdout.splitlines()]
    assert got == [h for h in expected if h["started_at"] >= since]
    res = run_cli("search", "needle", "--limit", "2", env=_env())
    assert len(res.stdout.splitlines()) == 2 and "stopped at --limit 2" in res.stderr
    res = run_cli("search", r"needle \w+[24]$", "--regex", "--json", env=_env())
    got = [json.loads(x) for x in res.stdout.splitlines()]
    assert got == [h for h in expected if h["text"][-1] in "24"] and len(got) == 4
    res = run_cli("search", "needle", "--status", "failed", env=_env())
    assert res.returncode == 1 and res.stdout == ""
    res = run_cli("search", "needle", "--status", "bogus", env=_env())
    assert res.returncode == 2 and "not a run status" in res.stderr
    res = run_cli("search", "needle", "--since", "yesterday", env=_env())
    assert res.returncode == 2 and "'yesterday' is not a date" in res.stderr
    res = run_cli("search", "needle", "--until", "9999-12-31", env=_env())
    assert res.returncode == 2 and "'9999-12-31' is out of range" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("search", "(a|aa)+$", "--regex", env=_env())
    assert res.returncode == 1  # no line made it slow: simply no match


def test_search_draws_a_progress_line_on_a_terminal(corpus: list[Any]) -> None:
    primary, secondary = pty.openpty()  # stderr on a terminal, stdout to a pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "search", "needle"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    err = b""
    try:
        while data := _read(primary):
            err += data
    finally:
        os.close(primary)
    out = proc.stdout.read() if proc.stdout is not None else b""
    proc.wait(timeout=120)
    assert proc.returncode == 0
    text = err.decode()
    assert "\r\x1b[Ksearching: " in text and "/12 runs" in text
    assert len(out.decode().splitlines()) == 6


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side closed
        return b""
