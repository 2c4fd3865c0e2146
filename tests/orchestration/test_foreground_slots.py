"""``fastflow run`` and ``max_instances``: a foreground run waits while its pipeline has
``max_instances`` runs pending or running on any server (issue 11: manual runs queue)."""

from __future__ import annotations

import os
import subprocess
import sys

from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.runs import store as runs
from tests.conftest import MakePipeline, cli_process, wait_until


def test_a_foreground_run_waits_for_a_free_slot(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("solo", "print('alone')\n", config='{"max_instances": 1}')
    busy = runs.create(app.db, "solo", "api", pid=os.getpid())  # a server's run: PENDING
    with cli_process("run", "solo", env=ff_env) as proc:
        line = proc.stderr.readline() if proc.stderr else ""
        assert line.startswith("fastflow: waiting: solo has 1 run(s) pending or running")
        assert proc.poll() is None
        assert [r.id for r in runs.list_runs(app.db, pipeline="solo")] == [busy.id]
        runs.finish(app.db, busy.id, RunStatus.SUCCESS, 0, 0)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    mine = runs.get(app.db, runs.parse_run_id(out.strip().splitlines()[-1]))
    first = runs.get(app.db, busy.id)
    assert mine is not None and first is not None and first.finished_at is not None
    assert mine.status == RunStatus.SUCCESS.value and mine.started_at >= first.finished_at


def test_runs_below_the_limit_start_at_once(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("pair", "print('two at a time')\n", config='{"max_instances": 2}')
    runs.create(app.db, "pair", "api", pid=os.getpid())
    done = subprocess.run(
        [sys.executable, "-m", "fastflow", "run", "pair"],
        env={**os.environ, **ff_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "waiting" not in done.stderr
    wait_until(lambda: len(runs.list_runs(app.db, pipeline="pair")) == 2, 5, "both runs")
