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
    assert f"{sig.name}: stopping (a running attempt ends CANCELLED" in err
    assert "Traceback" not in err
    with app.db.session() as s:
        rows = list(s.query(PipelineRun).all())
    assert [(r.pipeline_name, r.status, r.attempt) for r in rows] == [("slow", "CANCELLED", 1)]
    assert rows[0].finished_at is not None
    assert out.strip().splitlines()[-1] == str(rows[0].id)  # reported like any attempt


STUBBORN = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    print('got TERM', flush=True)\n"
    "    time.sleep(3.5)\n"  # longer than the runner's old fixed 3 s grace
    "    print('cleaned up', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('started', flush=True)\n"
    "time.sleep(120)\n"
)


def _log_of(ff_env: dict[str, str], name: str) -> Path | None:
    logs = sorted((Path(ff_env["LOGS_DIR"]) / name).glob("*/run.log"))
    return logs[0] if logs else None


def _says(ff_env: dict[str, str], name: str, text: bytes) -> bool:
    log = _log_of(ff_env, name)
    return log is not None and text in log.read_bytes()


def test_the_foreground_run_gets_cancel_grace_seconds_to_clean_up(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """``CANCEL_GRACE_SECONDS`` holds for ``fastflow run`` as for a server: a pipeline
    whose SIGTERM handler needs 3.5 s finishes its clean-up (before, found by an outside
    audit, the foreground runner killed it after a fixed 3 s whatever the setting)."""
    make_pipeline("stubborn", STUBBORN)
    env = {**ff_env, "CANCEL_GRACE_SECONDS": "30"}
    with cli_process("run", "stubborn", env=env) as proc:
        wait_until(lambda: _says(ff_env, "stubborn", b"started"), 60, "the first line")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert _says(ff_env, "stubborn", b"cleaned up")
    with app.db.session() as s:
        assert [r.status for r in s.query(PipelineRun).all()] == ["CANCELLED"]


def test_a_second_signal_quits_and_the_run_is_still_cancelled_not_retried(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """Ctrl-C twice (the pipeline takes its grace time): the process quits at once, and
    its run — flagged as asked to stop by the first signal — is retired CANCELLED by the
    next fastflow command: no retry, no trigger (before, found by an outside audit, it
    was retired FAILED as interrupted and a server ran its retry and its triggers)."""
    make_pipeline("stubborn", STUBBORN, CONFIG)
    make_pipeline("after", "print('after')\n")
    env = {**ff_env, "CANCEL_GRACE_SECONDS": "30"}

    def flagged() -> bool:
        with app.db.session() as s:
            return any(r.cancel_requested_at for r in s.query(PipelineRun).all())

    with cli_process("run", "stubborn", env=env) as proc:
        wait_until(lambda: _says(ff_env, "stubborn", b"started"), 60, "the first line")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: _says(ff_env, "stubborn", b"got TERM"), 60, "the SIGTERM")
        assert flagged()  # recorded before the tree was signalled
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode != 0
    with cli_process("runs", "--json", env=ff_env) as sweep:  # retires the dead run
        sweep.communicate(timeout=60)
    with app.db.session() as s:
        rows = [(r.pipeline_name, r.status, r.attempt) for r in s.query(PipelineRun).all()]
    assert rows == [("stubborn", "CANCELLED", 1)]


def test_quitting_while_waiting_for_a_slot_records_nothing(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """A signal while ``fastflow run`` waits for a slot: it quits, says so truthfully,
    and leaves the running run of the other process alone (not flagged)."""
    make_pipeline("one", SLOW, '{"max_instances": 1}')
    with cli_process("run", "one", env=ff_env) as first:
        wait_until(lambda: _says(ff_env, "one", b"started"), 60, "the first run")
        with cli_process("run", "one", env=ff_env) as second:
            assert second.stderr is not None
            assert "waiting: one has 1 run(s)" in second.stderr.readline()
            second.send_signal(signal.SIGINT)
            _, err = second.communicate(timeout=60)
        assert "a wait for a slot or a retry ends with nothing more recorded" in err
        with app.db.session() as s:
            rows = [(r.status, r.cancel_requested_at) for r in s.query(PipelineRun).all()]
        assert rows == [("RUNNING", None)]
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
