"""A run's retry and triggers survive the death of the process that ran it.

An outside audit killed ``fastflow serve`` between committing a run's final status and
queuing its retry (a separate transaction): the retry was lost for good. Same for
``fastflow run`` killed with -9 while waiting for its next attempt. Now the final status
commits with ``follow_up_due`` set; the retry or triggers commit with it cleared; the
sweep of any live process follows up the runs of dead ones, exactly once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select, text

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, RunStatus, utcnow
from fastflow.orchestration import followup, queue
from fastflow.orchestration.dispatcher import STALE_S, Dispatcher
from fastflow.runs import store as runs
from tests.conftest import FORKSERVER_PRELOAD, MakePipeline, cli_process, run_cli, wait_until
from tests.harness.migrations import upgrade_to
from tests.harness.ports import free_port

RETRY_ONCE = '{"retries": {"max": 1, "delay_seconds": 0}}'


def _rows(ctx: Context, name: str) -> list[PipelineRun]:
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(PipelineRun)
                .where(PipelineRun.pipeline_name == name)
                .order_by(PipelineRun.started_at)
            )
        )


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _ended_run(ctx: Context, name: str, *, pid: int, status: RunStatus) -> PipelineRun:
    """A run of ``name`` owned by ``pid`` that ended ``status`` (follow-up due)."""
    run = runs.create(ctx.db, name, "manual", pid=pid)
    runs.finish(ctx.db, run.id, status, 1, 0, "exit code 1")
    row = runs.get(ctx.db, run.id)
    assert row is not None and row.follow_up_due is (status is not RunStatus.CANCELLED)
    return row


def test_a_server_killed_before_the_follow_up_leaves_it_to_the_next_process(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    folder = make_pipeline("flaky", "raise SystemExit(1)\n", RETRY_ONCE)
    # the run breaks its own pipeline.json as it ends: the server's follow-up then waits
    # for the file to settle, and is killed in that window (after the final status)
    (folder / "main.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(folder / 'pipeline.json')!r}).write_text('{{\"retries\": ')\n"
        "raise SystemExit(1)\n",
        encoding="utf-8",
    )
    first = queue.enqueue(app.db, "flaky", "manual")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "fastflow", "serve", "--port", str(free_port())],
            env={**os.environ, **ff_env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_until(lambda: b"reading it again" in log.read_bytes(), 60, "the follow-up")
            server.kill()
        finally:
            server.kill()
            server.wait(30)
    (row,) = _rows(app, "flaky")
    assert (row.id, row.status, row.follow_up_due) == (first, "FAILED", True)

    (folder / "pipeline.json").write_text(RETRY_ONCE, encoding="utf-8")
    for _ in range(2):  # any later command follows it up; the second finds nothing to do
        done = run_cli("runs", env=ff_env)
        assert done.returncode == 0, done.stderr
    ended, retry = _rows(app, "flaky")
    assert ended.id == first and not ended.follow_up_due
    assert (retry.status, retry.attempt, retry.retry_of, retry.triggered_by) == (
        "QUEUED",
        2,
        first,
        "retry",
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_fastflow_run_ended_while_waiting_for_its_next_attempt(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline, sig: signal.Signals
) -> None:
    """Killed (-9): the retry is left to a server, queued by the next command. Stopped
    (Ctrl-C): no retry is owed."""
    make_pipeline("flaky", "raise SystemExit(1)\n", '{"retries": {"max": 2, "delay_seconds": 300}}')
    with cli_process("run", "flaky", env=ff_env) as proc:
        wait_until(
            lambda: [r.status for r in _rows(app, "flaky")] == ["FAILED"], 60, "attempt 1's end"
        )
        proc.send_signal(sig)
        proc.communicate(timeout=60)
    assert proc.returncode != 0
    done = run_cli("runs", env=ff_env)
    assert done.returncode == 0, done.stderr
    if sig == signal.SIGINT:
        (only,) = _rows(app, "flaky")
        assert (only.status, only.follow_up_due) == ("FAILED", False)
        return
    ended, retry = _rows(app, "flaky")
    assert not ended.follow_up_due
    assert (retry.status, retry.attempt, retry.retry_of) == ("QUEUED", 2, ended.id)
    # the delay counts from the attempt's end, as it would have in the killed process
    assert ended.finished_at is not None and retry.not_before is not None
    assert retry.not_before - ended.finished_at == timedelta(seconds=300)


def test_the_foreground_retry_clears_the_mark_of_the_attempt_it_retries(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("flaky", "raise SystemExit(1)\n", '{"retries": {"max": 1, "delay_seconds": 0}}')
    done = run_cli("run", "flaky", env=ff_env)
    assert done.returncode != 0
    rows = _rows(app, "flaky")
    assert [(r.attempt, r.status, r.follow_up_due) for r in rows] == [
        (1, "FAILED", False),
        (2, "FAILED", False),
    ]
    assert run_cli("runs", env=ff_env).returncode == 0
    assert len(_rows(app, "flaky")) == 2  # nothing left over for a sweep to queue


def test_the_server_sweep_follows_up_runs_of_dead_processes_and_its_own_stale_ones(
    app: Context, make_pipeline: MakePipeline
) -> None:
    make_pipeline("flaky", "raise SystemExit(1)\n", RETRY_ONCE)
    dead = _ended_run(app, "flaky", pid=_dead_pid(), status=RunStatus.FAILED)
    fresh = _ended_run(app, "flaky", pid=os.getpid(), status=RunStatus.FAILED)
    stale = _ended_run(app, "flaky", pid=os.getpid(), status=RunStatus.FAILED)
    with app.db.session() as s:
        s.get(PipelineRun, stale.id).finished_at = utcnow() - timedelta(seconds=STALE_S + 5)  # type: ignore[union-attr]
    cancelled = _ended_run(app, "flaky", pid=_dead_pid(), status=RunStatus.CANCELLED)

    Dispatcher(app)._follow_up_left_over()
    retries = {r.retry_of for r in _rows(app, "flaky") if r.attempt == 2}
    assert retries == {dead.id, stale.id}  # not the fresh one (its thread follows it up)
    assert runs.get(app.db, fresh.id).follow_up_due  # type: ignore[union-attr]
    assert not runs.get(app.db, cancelled.id).follow_up_due  # type: ignore[union-attr]
    Dispatcher(app)._follow_up_left_over()
    assert len(_rows(app, "flaky")) == 6  # once only


def _follower(url: str, ended: followup.Ended, pipelines_dir: str, barrier: Barrier) -> None:
    db = Database(load_settings(database_url=url))
    try:
        with db.session() as s:  # connected and warm before the start line
            s.scalar(select(func.count()).select_from(PipelineRun))
        barrier.wait(timeout=60)
        followup.follow_up(db, Path(pipelines_dir), ended)
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_following_up_one_run_at_once_queue_one_retry(
    backend: str,
    ff_env: dict[str, str],
    make_pipeline: MakePipeline,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend == "postgresql":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
    ctx = bootstrap(load_settings())
    url = ctx.settings.database_url
    make_pipeline("flaky", "raise SystemExit(1)\n", RETRY_ONCE)
    # not "fork": a child forked while another thread of this process (a notification
    # worker left by an earlier test) held a lock could hang on it before the start line
    fork = multiprocessing.get_context("forkserver")
    fork.set_forkserver_preload(FORKSERVER_PRELOAD)
    try:
        for _ in range(3):
            run = _ended_run(ctx, "flaky", pid=_dead_pid(), status=RunStatus.FAILED)
            ended = followup.ended_of(run)
            ctx.db.dispose()  # (the children open their own connections)
            barrier = fork.Barrier(4)
            procs = [
                fork.Process(target=_follower, args=(url, ended, ff_env["PIPELINES_DIR"], barrier))
                for _ in range(4)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=120)
            assert [p.exitcode for p in procs] == [0] * 4
            retries = [r for r in _rows(ctx, "flaky") if r.retry_of == run.id]
            assert len(retries) == 1
    finally:
        ctx.db.dispose()


def test_runs_that_ended_before_the_upgrade_are_not_followed_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ff.db"
    db = Database(load_settings(_env_file=None, database_url=url))
    upgrade_to(db, "0013")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pipeline_runs (id, pipeline_name, status, triggered_by, started_at,"
                " runner_host, runner_pid) VALUES (:id, 'old', 'FAILED', 'cli',"
                " '2026-12-01 10:00:00.000000', :host, 1)"
            ),
            {"id": uuid.uuid4().hex, "host": runs.HOSTNAME},
        )
    db.migrate()
    (row,) = runs.list_runs(db, pipeline="old")
    assert row.follow_up_due is False
    assert runs.unfollowed(db, lambda _run: False, this_host=True) == []
    db.dispose()


# --- found by an outside audit of the above ------------------------------------------------


def test_a_retry_another_process_queued_is_not_started_by_fastflow_run_too(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """A server on another machine that took a live ``fastflow run`` for dead (its
    liveness lock's connection was cut) queued the retry; the foreground process then
    started the same attempt as well, and both triggered ``on_failure``."""
    make_pipeline(
        "flaky",
        "raise SystemExit(1)\n",
        '{"retries": {"max": 1, "delay_seconds": 2}, "triggers": {"on_failure": ["after"]}}',
    )
    make_pipeline("after")
    with cli_process("run", "flaky", env=ff_env) as proc:
        wait_until(
            lambda: [r.status for r in _rows(app, "flaky")] == ["FAILED"], 60, "attempt 1's end"
        )
        (first,) = _rows(app, "flaky")
        # what the other server's sweep does with the run of a process it takes for dead
        taken = followup.follow_up(
            app.db, app.settings.pipelines_dir, followup.ended_of(first), swept=True
        )
        assert taken.retry is not None
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "was queued for a server by another process" in err and "Traceback" not in err
    rows = _rows(app, "flaky")
    assert [(r.attempt, r.status) for r in rows] == [(1, "FAILED"), (2, "QUEUED")]
    assert _rows(app, "after") == []  # no trigger from this process: the retry decides


def test_a_run_whose_end_could_not_be_recorded_is_retired_by_its_own_server(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """The database away as a run ended: ``finish`` and the fallback both failed, the
    run thread ended, and the run stayed RUNNING (holding its ``max_instances`` slot)
    for the life of the server."""
    make_pipeline("flaky", "raise SystemExit(1)\n", RETRY_ONCE)
    lost = runs.create(app.db, "flaky", "manual", pid=os.getpid())
    running = runs.create(app.db, "flaky", "manual", pid=os.getpid())
    for run in (lost, running):
        runs.mark_running(app.db, run.id, pid=os.getpid())
    dispatcher = Dispatcher(app)
    dispatcher._active[running.id] = threading.Event()  # its thread still runs it
    dispatcher._retire_lost()
    rows = {r.id: r for r in _rows(app, "flaky")}
    gone = rows[lost.id]
    assert gone.status == "FAILED" and not gone.follow_up_due
    assert gone.failure_reason == (
        "interrupted: its end could not be recorded (the database was unavailable)"
    )
    assert rows[running.id].status == "RUNNING"
    (retry,) = [r for r in rows.values() if r.attempt == 2]
    assert retry.retry_of == lost.id and retry.status == "QUEUED"


def test_a_zombie_runner_counts_as_dead() -> None:
    """A ``fastflow run`` killed while its parent never reaps it stays a zombie: it was
    counted alive, and its retry never queued."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(
            lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "a zombie"
        )
        started = psutil.Process(child.pid).create_time()
        run = PipelineRun(
            pipeline_name="x",
            status="FAILED",
            runner_host=runs.HOSTNAME,
            runner_pid=child.pid,
            runner_started=started,
        )
        assert runs.runner_alive(run) is False
        me = PipelineRun(runner_pid=os.getpid(), runner_started=runs.process_started(os.getpid()))
        assert runs.runner_alive(me) is True
    finally:
        child.wait()


def test_a_sweep_keeps_the_run_due_while_its_pipeline_json_is_invalid(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """A sweep found the run of a dead process while its pipeline.json was invalid: it
    waited 5 s, then gave the retry and the triggers up for good. Now the run stays due
    (its process is gone: nothing else will follow it up) until the file parses."""
    folder = make_pipeline("flaky", "raise SystemExit(1)\n", '{"retries": ')
    ended = _ended_run(app, "flaky", pid=_dead_pid(), status=RunStatus.FAILED)
    assert run_cli("runs", env=ff_env).returncode == 0
    (still,) = _rows(app, "flaky")
    assert still.follow_up_due  # not given up
    (folder / "pipeline.json").write_text(RETRY_ONCE, encoding="utf-8")
    assert run_cli("runs", env=ff_env).returncode == 0
    first, retry = _rows(app, "flaky")
    assert first.id == ended.id and not first.follow_up_due
    assert (retry.attempt, retry.retry_of) == (2, ended.id)


def test_the_liveness_lock_is_taken_again_after_its_connection_died(
    ff_env: dict[str, str], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastflow.runs import liveness

    monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    me = os.getpid()
    started = runs.process_started(me)
    key = liveness.key_of(runs.HOSTNAME, me, started)
    try:
        liveness.hold(ctx.db)
        held = liveness._held[key]
        backend = held.execute(text("SELECT pg_backend_pid()")).scalar()
        held.commit()
        with ctx.db.engine.connect() as admin:  # a restart, an idle-session killer
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
            admin.commit()
        monkeypatch.setattr(liveness, "CHECK_S", 0.0)
        liveness.hold(ctx.db)  # notices, and takes the lock anew
        with ctx.db.engine.connect() as other:  # another server's look: still held
            got = other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            other.commit()
        assert got is False
    finally:
        conn = liveness._held.pop(key, None)
        if conn is not None:
            conn.close()
        ctx.db.dispose()


def test_a_second_ctrl_c_as_an_attempt_ends_drops_its_retry(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """A second Ctrl-C (``stop_on_signals`` then raises ``KeyboardInterrupt``) right after
    an attempt failed — while its end is reported or its notification waited for — stops
    ``fastflow run`` on purpose: no retry is owed, so no later sweep queues one."""
    from fastflow.orchestration.foreground import run_in_foreground

    make_pipeline("flaky", "raise SystemExit(1)\n", '{"retries": {"max": 2, "delay_seconds": 300}}')

    def second_ctrl_c(_result: object, delay: float | None) -> None:
        assert delay == 300
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_foreground(app, "flaky", "manual", on_attempt=second_ctrl_c)
    (only,) = _rows(app, "flaky")
    assert (only.status, only.follow_up_due) == ("FAILED", False)
    Dispatcher(app)._follow_up_left_over()
    assert len(_rows(app, "flaky")) == 1


def test_notices_of_interrupted_runs_do_not_hold_up_the_start_of_a_run(
    app: Context, ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """A review: a command first waited (up to its whole 20 s) for the failure messages of
    the interrupted runs it retired, so ``fastflow run`` started its pipeline only after
    a slow mail server had used up that time. The messages now go out while it works."""
    from tests.harness.drip import RawServer

    def silent(conn: object, stopped: threading.Event) -> None:
        stopped.wait()  # connects, never greets: a delivery takes its whole budget

    marker = tmp_path / "started"
    make_pipeline("quick", f"open({str(marker)!r}, 'w')\n")
    run = runs.create(app.db, "quick", "manual", pid=_dead_pid())  # left RUNNING: interrupted
    with RawServer(silent) as server:
        mail = {
            "EMAIL_ENABLED": "true",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(server.port),
            "SMTP_SECURITY": "none",
            "SMTP_FROM": "fastflow@example.org",
            "EMAIL_RECIPIENTS": "ops@example.org",
        }
        with cli_process("run", "quick", env={**ff_env, **mail}) as proc:
            wait_until(lambda: server.connections > 0, 30, "the interrupted run's mail")
            wait_until(marker.exists, 15, "the pipeline to start while the mail waits")
            assert server.connections == 1  # the first delivery still held by the server
            proc.communicate(timeout=60)
    assert proc.returncode == 0
    row = runs.get(app.db, run.id)
    assert row is not None and row.status == "FAILED"
