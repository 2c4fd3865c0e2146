"""A server that dies: its running runs are marked FAILED by another server and the runs
it had claimed but not started go back to the queue (PostgreSQL, runners on other
machines told apart by their liveness locks)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun, utcnow
from fastflow.runs import liveness
from fastflow.runs import store as runs
from tests.conftest import MakePipeline


@pytest.mark.slow
def test_runs_of_a_dead_server_on_another_machine_are_taken_over(
    ff_env: dict[str, str], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    now = utcnow()

    def add(status: str, host: str, pid: int, started: float, **extra: object) -> PipelineRun:
        run = PipelineRun(
            pipeline_name="etl",
            status=status,
            triggered_by="schedule",
            started_at=now - timedelta(minutes=5),
            runner_host=host,
            runner_pid=pid,
            runner_started=started,
            queued_at=now - timedelta(minutes=6),
            **extra,
        )
        with ctx.db.session() as s:
            s.add(run)
        return run

    dead_running = add("RUNNING", "gone-host", 4242, 1000.0, pipeline_pid=4343)
    dead_claimed = add("PENDING", "gone-host", 4242, 1000.0)
    live_running = add("RUNNING", "live-host", 5151, 2000.0, pipeline_pid=5252)
    holder = ctx.db.engine.connect()  # the live server on the other machine holds its lock
    holder.execute(
        text("SELECT pg_advisory_lock(:k)"), {"k": liveness.key_of("live-host", 5151, 2000.0)}
    )
    holder.commit()
    try:
        alive = lambda r: liveness.is_alive(  # noqa: E731
            ctx.db, r.runner_host, r.runner_pid, r.runner_started
        )
        assert runs.sweep_dead(ctx.db, ctx.settings.logs_root, alive, this_host=False) == 2
    finally:
        holder.close()
    with ctx.db.session() as s:
        state = {r.id: r for r in s.query(PipelineRun).all()}
    assert state[dead_running.id].status == "FAILED"
    assert state[dead_claimed.id].status == "QUEUED" and state[dead_claimed.id].runner_host is None
    assert state[live_running.id].status == "RUNNING"
    ctx.db.dispose()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _interrupted(
    ctx: Context, name: str, attempt: int, retry_of: uuid.UUID | None = None
) -> uuid.UUID:
    """A RUNNING run on this host whose fastflow process is gone."""
    run = PipelineRun(
        pipeline_name=name,
        status="RUNNING",
        triggered_by="schedule" if attempt == 1 else "retry",
        started_at=utcnow() - timedelta(minutes=1),
        runner_host=runs.HOSTNAME,
        runner_pid=_dead_pid(),
        runner_started=1000.0,
        attempt=attempt,
        retry_of=retry_of,
    )
    with ctx.db.session() as s:
        s.add(run)
    return run.id


CONFIG = '{"retries": {"max": 2, "delay_seconds": 0}, "triggers": {"on_failure": ["after"]}}'


def _all(ctx: Context) -> list[PipelineRun]:
    with ctx.db.session() as s:
        return list(s.query(PipelineRun).order_by(PipelineRun.queued_at).all())


def test_a_run_interrupted_by_a_dead_server_is_retried_and_its_triggers_follow(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: a run whose server was killed ended FAILED
    ("interrupted") with no next attempt and no ``on_failure`` trigger. Its retry and,
    after its last attempt, its triggers now follow as if it had ended."""
    from fastflow.orchestration.dispatcher import Dispatcher

    make_pipeline("flaky", "raise SystemExit(1)\n", CONFIG)
    make_pipeline("after", "print('after')\n")
    first = _interrupted(app, "flaky", 1)
    last = _interrupted(app, "flaky", 3, retry_of=uuid.uuid4())

    Dispatcher(app)._sweep_dead_servers()

    rows = {r.id: r for r in _all(app)}
    assert rows[first].status == "FAILED" and rows[last].status == "FAILED"
    retries = [r for r in rows.values() if r.retry_of == first]
    assert [(r.status, r.attempt, r.triggered_by) for r in retries] == [("QUEUED", 2, "retry")]
    triggered = [r for r in rows.values() if r.pipeline_name == "after"]
    assert [(r.status, r.upstream_run_id) for r in triggered] == [("QUEUED", last)]


def test_a_command_that_finds_an_interrupted_run_queues_its_retry(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """The same for a run retired by any command's start-up (here `fastflow runs`)."""
    from tests.conftest import run_cli

    make_pipeline("flaky", "raise SystemExit(1)\n", CONFIG)
    make_pipeline("after", "print('after')\n")
    first = _interrupted(app, "flaky", 1)
    res = run_cli("runs", "--json")
    assert res.returncode == 0, res.stderr
    rows = _all(app)
    assert [r.status for r in rows if r.id == first] == ["FAILED"]
    assert [(r.attempt, r.status) for r in rows if r.retry_of == first] == [(2, "QUEUED")]


def test_a_run_cancelled_after_its_server_died_ends_cancelled_without_a_retry(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """An outside audit: ``fastflow cancel`` of a run whose server had died answered
    "cancellation requested", then the run was marked FAILED ("interrupted") and its
    retry ran. Retries never follow CANCELLED; neither do triggers."""
    from fastflow.orchestration import queue
    from fastflow.orchestration.dispatcher import Dispatcher

    make_pipeline("flaky", "raise SystemExit(1)\n", CONFIG)
    make_pipeline("after", "print('after')\n")
    run_id = _interrupted(app, "flaky", 1)
    assert queue.cancel(app.db, run_id) == "requested"

    Dispatcher(app)._sweep_dead_servers()

    rows = _all(app)
    (run,) = [r for r in rows if r.id == run_id]
    assert run.status == "CANCELLED" and run.failure_reason is not None
    assert "gone" in run.failure_reason
    assert [r for r in rows if r.id != run_id] == []  # no retry, no trigger


def test_processes_sweeping_at_once_retire_a_run_once(app: Context) -> None:
    """Two sweeps of the same dead run, the second committed while the first one is
    between its read and its write: the run is retired (and followed up) once."""
    run_id = _interrupted(app, "flaky", 1)
    inner: list[PipelineRun] = []
    outer: list[PipelineRun] = []

    def dead_but_another_sweeps_first(run: PipelineRun) -> bool:
        if not inner:
            runs.sweep_dead(
                app.db, app.settings.logs_root, lambda r: False, this_host=True, failed=inner
            )
        return False

    runs.sweep_dead(
        app.db, app.settings.logs_root, dead_but_another_sweeps_first, this_host=True, failed=outer
    )
    assert [r.id for r in inner] == [run_id] and outer == []


def test_a_trigger_to_a_disabled_pipeline_queues_nothing(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: a disabled pipeline (whose webhook answers 409 and whose
    schedules do not fire) still ran when another pipeline's trigger named it."""
    from fastflow.orchestration.followup import Ended, follow_up

    make_pipeline("up", "print('up')\n", '{"triggers": {"on_success": ["off", "on"]}}')
    make_pipeline("off", "print('off')\n", '{"enabled": false}')
    make_pipeline("on", "print('on')\n")
    done = follow_up(
        app.db, app.settings.pipelines_dir, Ended(uuid.uuid4(), "up", "SUCCESS", 1, None)
    )
    names = [r.pipeline_name for r in _all(app) if r.id in done.triggered]
    assert names == ["on"]


def test_a_servers_pass_child_leaves_interrupted_runs_to_the_server(app: Context) -> None:
    """The pass child of ``fastflow serve`` bootstraps too: if it retired a dead run, that
    run's retry and triggers would be lost (only the server follows them up)."""
    import subprocess
    import sys

    from fastflow.lifecycle.child import ENTRY_POINT

    run_id = _interrupted(app, "flaky", 1)
    done = subprocess.run(
        [sys.executable, "-m", ENTRY_POINT, "--trigger", "test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [r.status for r in _all(app) if r.id == run_id] == ["RUNNING"]


def test_a_finished_run_of_a_dead_runner_on_another_machine_gets_its_retry_once(
    ff_env: dict[str, str],
    pg_url: str,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL, two other machines: the runner on one died after recording its run's
    end and before queuing the retry (its liveness lock is free), the runner on the other
    lives (its lock is held) and follows up its own run. A server's sweep queues the
    dead one's retry, once, and leaves the live one's run alone."""
    from fastflow.orchestration.dispatcher import Dispatcher

    monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    make_pipeline("flaky", "raise SystemExit(1)\n", '{"retries": {"max": 1, "delay_seconds": 0}}')
    now = utcnow()

    def ended(host: str, pid: int, started: float) -> uuid.UUID:
        run = PipelineRun(
            pipeline_name="flaky",
            status="FAILED",
            triggered_by="schedule",
            started_at=now - timedelta(minutes=2),
            finished_at=now - timedelta(minutes=1),
            exit_code=1,
            runner_host=host,
            runner_pid=pid,
            runner_started=started,
            follow_up_due=True,
        )
        with ctx.db.session() as s:
            s.add(run)
        return run.id

    dead = ended("gone-host", 4242, 1000.0)
    live = ended("live-host", 5151, 2000.0)
    holder = ctx.db.engine.connect()
    holder.execute(
        text("SELECT pg_advisory_lock(:k)"), {"k": liveness.key_of("live-host", 5151, 2000.0)}
    )
    holder.commit()
    try:
        for _ in range(2):  # the second sweep finds nothing left to do
            Dispatcher(ctx)._follow_up_left_over()
    finally:
        holder.close()
    rows = _all(ctx)
    retries = [r for r in rows if r.attempt == 2]
    assert [(r.retry_of, r.status, r.triggered_by) for r in retries] == [(dead, "QUEUED", "retry")]
    state = {r.id: r.follow_up_due for r in rows}
    assert state[dead] is False and state[live] is True
    ctx.db.dispose()
