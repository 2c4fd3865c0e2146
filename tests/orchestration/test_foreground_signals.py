"""``fastflow run`` stopped by a signal: Ctrl-C (SIGINT), SIGTERM (``timeout``, systemd) or
SIGHUP (a closed terminal) ends the running attempt CANCELLED — its process tree
stopped, no retry, no trigger — instead of the process dying and its run being retired
later as interrupted and retried by a server (an outside audit's finding)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from tests.conftest import MakePipeline, cli_process, wait_until

SLOW = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
CONFIG = '{"retries": {"max": 2, "delay_seconds": 0}, "triggers": {"on_failure": ["after"]}}'


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_the_foreground_run_cancelled_without_a_retry(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline, sig: signal.Signals
) -> None:
    make_pipeline("slow", SLOW, CONFIG)
    make_pipeline("after", "print('after')\n")
    logs = Path(ff_env["LOGS_DIR"]) / "slow"

    def started() -> bool:  # the pipeline runs: its first line is in its log
        return any(b"started" in f.read_bytes() for f in logs.glob("*/run.log"))

    with cli_process("run", "slow", env={**ff_env, "CANCEL_GRACE_SECONDS": "2"}) as proc:
        wait_until(started, 60, "the pipeline's first line")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"{sig.name}: stopping the run" in err and "Traceback" not in err
    with app.db.session() as s:
        rows = list(s.query(PipelineRun).all())
    assert [(r.pipeline_name, r.status, r.attempt) for r in rows] == [("slow", "CANCELLED", 1)]
    assert rows[0].finished_at is not None
    assert out.strip().splitlines()[-1] == str(rows[0].id)  # reported like any attempt
