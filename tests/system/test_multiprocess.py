"""Guarantee 5 across processes: two `fastflow serve` and a `fastflow cleanup` on one
PostgreSQL database, their scheduled passes firing in the same minute."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.db.models import CleanupPass
from tests.conftest import wait_until
from tests.harness.faultproxy import method_is
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve
from tests.seeding import keys, ledger, run_row, seed_series

RUNS = 40


@pytest.mark.slow
def test_two_servers_and_a_cli_never_run_passes_at_once(
    pg_url: str,
    s3: S3Env,
    ff_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        **ff_env,
        **s3.env(),
        "DATABASE_URL": pg_url,
        "LOG_RETENTION_RUNS": "1",
        "CLEANUP_SCHEDULE": "* * * * *",
        "S3_MAX_CONCURRENCY": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    runs = seed_series(ctx, "shared", RUNS)
    s3.proxy.delay(0.1, match=method_is("PUT"))  # a pass takes several seconds
    logs = [tmp_path / f"serve-{i}.log" for i in range(2)]
    # both servers start early in a minute and answer (their schedulers started) before
    # its end: a boundary between their starts let the first one archive everything
    # alone (seen in CI), and a server still starting at the boundary would miss it
    wait_until(lambda: datetime.now().second < 30, 75, "the start of a minute")
    with ExitStack() as servers:
        for log in logs:
            servers.enter_context(fastflow_serve(env, stderr=servers.enter_context(log.open("w"))))
        assert ledger(ctx) == {}, "a pass ran before the contended minute (slow start-up)"
        # just before the next minute, start a CLI pass too: all three contend for the lock
        wait_until(lambda: datetime.now().second >= 59, 75, "the end of the minute")
        wait_until(lambda: datetime.now().second < 59, 5, "the minute boundary")
        cli = subprocess.run(
            [sys.executable, "-m", "fastflow", "cleanup", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode in (0, 3), cli.stderr

        def done() -> bool:
            with ctx.db.session() as s:
                rows = list(s.scalars(select(CleanupPass)))
            return len(ledger(ctx)) == RUNS - 1 and all(r.finished_at for r in rows)

        wait_until(done, 180, "every run to be archived")
    with ctx.db.session() as s:
        passes = sorted(s.scalars(select(CleanupPass)), key=lambda p: p.started_at)
    assert len(passes) >= 1
    for earlier, later in itertools.pairwise(passes):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at
    assert sum(p.archived_runs for p in passes) == RUNS - 1  # nothing archived twice
    triggers = {p.trigger for p in passes}
    assert "schedule" in triggers or "cli" in triggers
    # the three really contended: at least one of them was turned away by the lock
    refused = sum("skipped: another pass is running" in log.read_text() for log in logs)
    refused += cli.returncode == 3
    assert refused >= 1
    if cli.returncode == 0:
        assert json.loads(cli.stdout)["backup_failures"] == 0
    for run in runs[:-1]:
        assert not run.log.exists() and run_row(ctx, run.id) is None
    assert runs[-1].log.exists()
    assert len(keys(s3.client(), s3.bucket)) == 2 * (RUNS - 1)
