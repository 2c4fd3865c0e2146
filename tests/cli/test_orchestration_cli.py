"""`fastflow run --env` and retries in the foreground, `fastflow cancel`, `fastflow
schedules`, through the real command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.orchestration import queue
from tests.conftest import MakePipeline

Cli = Callable[..., CompletedProcess[str]]


def test_run_with_parameters(make_pipeline: MakePipeline, cli: Cli) -> None:
    code = "import os; print('MODE=' + os.environ['MODE'])"
    make_pipeline("p", code, '{"env": {"MODE": "x"}}')
    res = cli("run", "p", "--env", "MODE=full", "--env", "EXTRA=1")
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    log = cli("logs", run_id).stdout
    assert "MODE=full" in log
    make_pipeline("exits1", "raise SystemExit(1)\n")
    failed = cli("run", "exits1")
    assert failed.returncode != 0 and "FAILED (exit code 1); log:" in failed.stderr
    assert "exit code 1; exit code 1" not in failed.stderr  # said once (outside audit)
    bad = cli("run", "p", "--env", "NOEQUALS")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    # an item without a name or without '=' may be the secret itself: never echoed
    for item in (
        "=topsecret-1",
        "topsecret-1",
        "postgresql://app:topsecret@db/x?ssl=on",
        "topsecretAAAA==",  # base64 with its padding: not KEY "topsecretAAAA", VALUE "="
    ):
        leaked = cli("run", "p", "--env", "A=1", "--env", item)
        assert leaked.returncode == 2 and "item 2" in leaked.stderr
        assert "topsecret" not in leaked.stderr + leaked.stdout
    reserved = cli("run", "p", "--env", "FASTFLOW_RUN_ID=mine")
    assert reserved.returncode == 2 and "set by fastflow" in reserved.stderr


def test_foreground_run_honours_retries(
    make_pipeline: MakePipeline, cli: Cli, tmp_path: Path
) -> None:
    state = tmp_path / "n"
    make_pipeline(
        "flaky",
        f"import pathlib, sys\np = pathlib.Path({str(state)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\n"
        "sys.exit(0 if n >= 1 else 4)\n",
        '{"retries": {"max": 3, "delay_seconds": 0.2}}',
    )
    res = cli("run", "flaky")
    assert res.returncode == 0, res.stderr
    ids = res.stdout.strip().splitlines()
    assert len(ids) == 2  # one line per attempt; the last is the successful one
    assert "retrying in 0.2 s" in res.stderr
    runs = json.loads(cli("runs", "--pipeline", "flaky", "--json").stdout)
    by_id = {r["id"]: r for r in runs}
    assert by_id[ids[0]]["status"] == "FAILED" and by_id[ids[0]]["attempt"] == 1
    assert by_id[ids[1]]["status"] == "SUCCESS" and by_id[ids[1]]["attempt"] == 2
    assert by_id[ids[1]]["retry_of"] == ids[0] and by_id[ids[1]]["triggered_by"] == "retry"


def test_cancel_a_queued_run_from_the_cli(
    make_pipeline: MakePipeline, cli: Cli, ff_env: dict[str, str]
) -> None:
    make_pipeline("later")
    ctx = bootstrap(load_settings())
    run_id = queue.enqueue(ctx.db, "later", "api")
    res = cli("cancel", str(run_id))
    assert res.returncode == 0 and "cancelled" in res.stderr
    again = cli("cancel", str(run_id))
    assert again.returncode == 1 and "already finished" in again.stderr
    (row,) = json.loads(cli("runs", "--json").stdout)
    assert row["status"] == "CANCELLED" and row["queued_at"]
    ctx.db.dispose()


def test_schedules_lists_next_runs(make_pipeline: MakePipeline, cli: Cli) -> None:
    make_pipeline(
        "nightly",
        config='{"schedules": [{"cron": "30 2 * * *", "timezone": "Europe/Berlin"},'
        ' {"interval_seconds": 60}]}',
    )
    make_pipeline("manual_only")
    res = cli("schedules", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["pipeline_name"] for r in rows] == ["nightly", "nightly"]
    cron, every = rows
    assert cron["schedule"] == "cron 30 2 * * * (Europe/Berlin)" and cron["next_run_at"]
    assert every["schedule"] == "every 60 s" and every["next_run_at"].endswith("+00:00")


def test_unknown_status_is_a_usage_error(cli: Cli) -> None:
    res = cli("runs", "--status", "bogus")
    assert res.returncode == 2 and "'bogus' is not a run status" in res.stderr
    assert cli("runs", "--status", "queued").returncode == 0


def test_cancel_stops_a_foreground_run(
    make_pipeline: MakePipeline, cli: Cli, tmp_path: Path
) -> None:
    """Found by an outside audit: `fastflow cancel` answered "cancellation requested" for
    a run of `fastflow run`, and the run went on to SUCCESS. The foreground process now
    stops it like a server does, without retrying it."""
    import os
    import subprocess
    import sys

    from fastflow.db.models import PipelineRun
    from tests.conftest import wait_until

    started = tmp_path / "started"
    make_pipeline(
        "sleeper",
        f"import pathlib, time\npathlib.Path({str(started)!r}).write_text('x')\ntime.sleep(120)\n",
        '{"retries": {"max": 2, "delay_seconds": 0}}',
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "run", "sleeper"],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(started.exists, 60, "the pipeline to start")
        ctx = bootstrap(load_settings())
        with ctx.db.session() as s:
            (run,) = s.query(PipelineRun).filter(PipelineRun.pipeline_name == "sleeper").all()
        res = cli("cancel", str(run.id))
        assert res.returncode == 0, res.stderr
        _out, err = proc.communicate(timeout=30)  # well before the pipeline's 120 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "CANCELLED" in err and "retrying" not in err
    with ctx.db.session() as s:
        rows = s.query(PipelineRun).filter(PipelineRun.pipeline_name == "sleeper").all()
    assert [r.status for r in rows] == ["CANCELLED"]
    ctx.db.dispose()
