"""The run queue and its dispatcher, with real pipelines and a real database: retries
with their delays, downstream triggers, run parameters, max_instances and
MAX_CONCURRENT_RUNS, cancelling queued and running runs."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun
from fastflow.lifecycle.cleanup import run_pass
from fastflow.orchestration import queue
from fastflow.orchestration.dispatcher import Dispatcher
from tests.conftest import MakePipeline, wait_until
from tests.harness.fixtures import S3Env
from tests.seeding import keys, object_bytes

FINAL = ("SUCCESS", "FAILED", "TIMEOUT", "CANCELLED")


@pytest.fixture
def dispatcher(app: Context) -> Iterator[Dispatcher]:
    d = Dispatcher(app)
    yield d
    d.stop()


def _runs(ctx: Context, pipeline: str) -> list[PipelineRun]:
    with ctx.db.session() as s:
        rows = s.query(PipelineRun).filter(PipelineRun.pipeline_name == pipeline).all()
    return sorted(rows, key=lambda r: (r.queued_at or r.started_at, r.attempt or 1))


def _final(ctx: Context, pipeline: str, n: int) -> list[PipelineRun]:
    wait_until(
        lambda: len([r for r in _runs(ctx, pipeline) if r.status in FINAL]) >= n,
        60,
        f"{n} finished runs of {pipeline}",
    )
    return _runs(ctx, pipeline)


def _log(ctx: Context, run: PipelineRun) -> Path:
    assert run.log_file is not None
    return ctx.settings.logs_root / run.log_file


FLAKY = """
import pathlib, sys
state = pathlib.Path({state!r})
n = int(state.read_text()) if state.exists() else 0
state.write_text(str(n + 1))
print("attempt", n + 1)
sys.exit(0 if n >= 2 else 3)
"""


def test_fails_twice_then_succeeds_in_three_attempts_with_the_configured_delays(
    app: Context, dispatcher: Dispatcher, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    make_pipeline(
        "flaky",
        FLAKY.format(state=str(tmp_path / "state")),
        config='{"retries": {"max": 2, "delay_seconds": 1, "backoff": "exponential"}}',
    )
    first = dispatcher.start("flaky", "api")
    runs = _final(app, "flaky", 3)
    assert [r.status for r in runs] == ["FAILED", "FAILED", "SUCCESS"]
    assert [r.attempt for r in runs] == [1, 2, 3]
    assert runs[0].id == first and all(r.retry_of == first for r in runs[1:])
    assert [r.triggered_by for r in runs] == ["api", "retry", "retry"]
    for earlier, later, delay in ((runs[0], runs[1], 1.0), (runs[1], runs[2], 2.0)):
        assert earlier.finished_at is not None
        gap = (later.started_at - earlier.finished_at).total_seconds()
        assert delay - 0.1 <= gap <= delay + 1.5, gap  # exponential: 1 s, then 2 s
    for r in runs:  # every attempt has its own log
        assert f"attempt {r.attempt}" in _log(app, r).read_text()


def test_every_attempt_is_archived_by_a_cleanup_pass(
    ff_env: dict[str, str],
    s3: S3Env,
    make_pipeline: MakePipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    ctx = bootstrap(load_settings())
    d = Dispatcher(ctx)
    try:
        make_pipeline(
            "flaky",
            FLAKY.format(state=str(tmp_path / "state")),
            config='{"retries": {"max": 2, "delay_seconds": 0}}',
        )
        d.start("flaky", "api")
        runs = _final(ctx, "flaky", 3)
    finally:
        d.stop()
    retention = bootstrap(load_settings(log_retention_runs=1))
    summary = run_pass(retention, "test")
    assert summary.archived_runs == 2 and summary.backup_failures == 0
    stored = keys(s3.client(), s3.bucket)
    for r in runs[:2]:
        key = f"pipeline-logs/flaky/{r.id}/run.log"
        assert key in stored
        assert f"attempt {r.attempt}" in object_bytes(s3.client(), s3.bucket, key).decode()
    retention.db.dispose()
    ctx.db.dispose()


def test_triggers_queue_downstream_runs_with_the_upstream_facts(
    app: Context, dispatcher: Dispatcher, make_pipeline: MakePipeline
) -> None:
    make_pipeline(
        "extract",
        "import sys; sys.exit(0)",
        config='{"triggers": {"on_success": ["load"], "on_failure": ["alarm"]}}',
    )
    make_pipeline(
        "load",
        "import os; print(os.environ['FASTFLOW_UPSTREAM_RUN_ID'],"
        " os.environ['FASTFLOW_UPSTREAM_STATUS'])",
    )
    make_pipeline("alarm")
    upstream = dispatcher.start("extract", "api")
    (load,) = _final(app, "load", 1)
    assert load.triggered_by == "upstream" and load.upstream_run_id == upstream
    text = _log(app, load).read_text()
    assert f"{upstream} SUCCESS" in text
    assert _runs(app, "alarm") == []


def test_a_fast_flow_trigger_with_run_config_id_runs_that_configuration(
    app: Context, dispatcher: Dispatcher, make_pipeline: MakePipeline
) -> None:
    """``downstream_triggers[].run_config_id`` names a schedule of the target: the
    triggered run is that configuration, its ``run_config_id`` and ``default_env`` (the
    key was accepted and ignored before)."""
    trigger = {"pipeline": "ffdown", "on_success": True, "run_config_id": "cfgX"}
    make_pipeline("trig_up", config=json.dumps({"downstream_triggers": [trigger]}))
    schedule = {"id": "cfgX", "schedule_cron": "0 0 1 1 *", "default_env": {"MODE": "fromcfg"}}
    make_pipeline(
        "ffdown",
        "import os; print('MODE=' + os.environ.get('MODE', '-'),"
        " os.environ['FASTFLOW_UPSTREAM_STATUS'])",
        config=json.dumps({"schedules": [schedule]}),
    )
    upstream = dispatcher.start("trig_up", "api")
    (down,) = _final(app, "ffdown", 1)
    assert down.upstream_run_id == upstream and down.run_config_id == "cfgX"
    assert "MODE=fromcfg SUCCESS" in _log(app, down).read_text()


def test_run_parameters_reach_the_pipeline(
    app: Context, dispatcher: Dispatcher, make_pipeline: MakePipeline
) -> None:
    make_pipeline(
        "params", "import os; print('MODE=' + os.environ['MODE'])", '{"env": {"MODE": "a"}}'
    )
    dispatcher.start("params", "api", env={"MODE": "full"})
    (run,) = _final(app, "params", 1)
    assert "MODE=full" in _log(app, run).read_text()
    assert json.loads(run.env_overrides or "{}") == {"MODE": "full"}


def test_max_instances_and_concurrency_limit(
    ff_env: dict[str, str], make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_RUNS", "2")
    ctx = bootstrap(load_settings())
    d = Dispatcher(ctx)
    gate = Path(ff_env["DATA_DIR"]) / "gate"
    wait_code = (
        f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\n"
    )
    make_pipeline("single", wait_code, '{"max_instances": 1}')
    make_pipeline("multi", wait_code, '{"max_instances": 5}')
    try:
        for name in ("single", "single", "multi", "multi", "multi"):
            d.start(name, "api")

        def running() -> dict[str, int]:
            with ctx.db.session() as s:
                rows = s.query(PipelineRun).filter(PipelineRun.status == "RUNNING").all()
            out: dict[str, int] = {}
            for r in rows:
                out[r.pipeline_name] = out.get(r.pipeline_name, 0) + 1
            return out

        wait_until(lambda: sum(running().values()) == 2, 30, "two runs to start")
        assert running().get("single", 0) <= 1
        assert d.active == 2  # MAX_CONCURRENT_RUNS
        gate.write_text("go")
        _final(ctx, "multi", 3)
        runs = _final(ctx, "single", 2)
        a, b = runs
        assert a.finished_at is not None and b.started_at >= a.finished_at  # never together
    finally:
        gate.write_text("go")
        d.stop()
        ctx.db.dispose()


def test_cancel_a_queued_and_a_running_run(
    app: Context, dispatcher: Dispatcher, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    make_pipeline(
        "sleepy",
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('started', flush=True)\ntime.sleep(300)\n",
        '{"max_instances": 1}',
    )
    running = dispatcher.start("sleepy", "api")
    queued = dispatcher.start("sleepy", "api")
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the first run")
    assert queue.cancel(app.db, queued) == "cancelled"  # at once, never started
    assert queue.cancel(app.db, running) == "requested"  # any server: noticed by its own
    (first, second) = _final(app, "sleepy", 2)
    by_id = {r.id: r for r in (first, second)}
    assert by_id[queued].status == "CANCELLED" and by_id[queued].runner_pid is None
    assert by_id[running].status == "CANCELLED"
    log = _log(app, by_id[running]).read_text()
    assert "run cancelled: process tree killed" in log
    pid = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15, "the process")
    assert queue.cancel(app.db, running) == "finished"
    with pytest.raises(Exception, match="not found"):
        queue.cancel(app.db, uuid.uuid4())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.slow
def test_cancel_from_another_server_on_postgres(
    ff_env: dict[str, str],
    pg_url: str,
    make_pipeline: MakePipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    server_a, server_b = bootstrap(load_settings()), bootstrap(load_settings())
    pid_file = tmp_path / "pid"
    make_pipeline(
        "sleepy",
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n",
    )
    runner_a = Dispatcher(server_a)
    try:
        run_id = runner_a.start("sleepy", "api")
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the run")
        assert queue.cancel(server_b.db, run_id) == "requested"  # server B asks
        (run,) = _final(server_a, "sleepy", 1)
        assert run.status == "CANCELLED"
        pid = int(pid_file.read_text())
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15, "the process")
    finally:
        runner_a.stop()
        server_a.db.dispose()
        server_b.db.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_run_cancelled_while_it_is_claimed_never_starts(
    ff_env: dict[str, str],
    pg_url: str,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
    database: str,
) -> None:
    """Found by an outside audit: a cancel committed between the claim's SELECT and its
    write was overwritten (CANCELLED -> PENDING), and the "cancelled" run ran. The cancel
    here is sent exactly there: while the claim asks for the pipeline's limit. On
    PostgreSQL it commits at once (the claim's advisory lock does not hold it up); on
    SQLite the claim holds the write lock, so the cancel waits and then finds the run
    claimed (``requested``: its server stops it) — never a CANCELLED run that starts."""
    if database == "postgresql":
        monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    try:
        make_pipeline("quick", "print('ran')\n")
        run_id = queue.enqueue(ctx.db, "quick", "api")
        other = queue.enqueue(ctx.db, "quick", "api")
        outcomes: list[str] = []
        canceller: list[threading.Thread] = []

        def limit_with_a_cancel_meanwhile(name: str) -> int:
            if not canceller:  # another request, in another thread
                t = threading.Thread(target=lambda: outcomes.append(queue.cancel(ctx.db, run_id)))
                canceller.append(t)
                t.start()
                if database == "postgresql":
                    t.join(timeout=30)
            return 10

        claimed = queue.claim(ctx.db, 5, limit_with_a_cancel_meanwhile)
        canceller[0].join(timeout=60)

        with ctx.db.session() as s:
            row = s.get(PipelineRun, run_id)
            taken = s.get(PipelineRun, other)
        assert row is not None and taken is not None and taken.status == "PENDING"
        if database == "postgresql":
            assert outcomes == ["cancelled"]
            assert [r.id for r in claimed] == [other]
            assert claimed[0].status == "PENDING" and claimed[0].runner_pid is not None
            assert row.status == "CANCELLED" and row.runner_pid is None
        else:
            assert outcomes == ["requested"]
            assert {r.id for r in claimed} == {run_id, other}
            assert row.status == "PENDING" and row.cancel_requested_at is not None
    finally:
        ctx.db.dispose()


def test_a_long_backlog_at_its_limit_holds_back_no_other_pipeline(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: the claim read the 20 oldest queued runs and then left
    out those of pipelines at their ``max_instances`` — 25 queued runs of one busy
    pipeline kept every other pipeline waiting with a slot free."""
    make_pipeline("busy", "print('busy')\n", '{"max_instances": 1}')
    make_pipeline("quick", "print('quick')\n")
    first = queue.enqueue(app.db, "busy", "api")
    assert [r.id for r in queue.claim(app.db, 1, lambda name: 1)] == [first]
    for _ in range(25):
        queue.enqueue(app.db, "busy", "api")
    quick = queue.enqueue(app.db, "quick", "api")

    claimed = queue.claim(app.db, 2, lambda name: 1)

    assert [r.id for r in claimed] == [quick]
    assert len([r for r in _runs(app, "busy") if r.status == "QUEUED"]) == 25


HALF_SAVED = '{"retries": {"max": 1, "del'


def test_a_run_picked_up_while_its_pipeline_json_is_half_saved_waits_for_the_file(
    app: Context,
    dispatcher: Dispatcher,
    make_pipeline: MakePipeline,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside audit: a queued run picked up just as an editor saved ``pipeline.json``
    ended FAILED "not started" (with a traceback in the server's log) and used up a
    retry. The start now reads the file again for a few seconds, as a follow-up does."""
    folder = make_pipeline("pay", "print('paid')\n", '{"retries": {"max": 1}}')
    (folder / "pipeline.json").write_text(HALF_SAVED, encoding="utf-8")
    caplog.set_level(logging.INFO, logger="fastflow.orchestration")
    run_id = queue.enqueue(app.db, "pay", "api")
    dispatcher.ensure_running()
    wait_until(lambda: "before it starts" in caplog.text, 30, "the first failed read")
    (folder / "pipeline.json").write_text('{"retries": {"max": 1}}', encoding="utf-8")
    (run,) = _final(app, "pay", 1)
    assert (run.id, run.status, run.attempt) == (run_id, "SUCCESS", 1)
    assert "paid" in _log(app, run).read_text(encoding="utf-8")
    assert "Traceback" not in caplog.text


def test_a_run_whose_pipeline_json_stays_invalid_fails_without_a_traceback_or_is_cancelled(
    app: Context,
    dispatcher: Dispatcher,
    make_pipeline: MakePipeline,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastflow.runs import pipelines

    folder = make_pipeline("pay", "print('paid')\n")
    (folder / "pipeline.json").write_text(HALF_SAVED, encoding="utf-8")
    caplog.set_level(logging.INFO, logger="fastflow.orchestration")
    monkeypatch.setattr(pipelines, "SETTLE_S", 0.5)
    queue.enqueue(app.db, "pay", "api")
    dispatcher.ensure_running()
    (failed,) = _final(app, "pay", 1)
    assert failed.status == "FAILED" and (failed.failure_reason or "").startswith("not started")
    assert "Traceback" not in caplog.text and "pipeline.json" in caplog.text

    monkeypatch.setattr(pipelines, "SETTLE_S", 60.0)
    caplog.clear()
    cancelled = queue.enqueue(app.db, "pay", "api")
    dispatcher.wake()
    wait_until(lambda: "before it starts" in caplog.text, 30, "the wait for the file")
    assert dispatcher.cancel(cancelled) == "requested"
    runs = _final(app, "pay", 2)
    assert [r.status for r in runs if r.id == cancelled] == ["CANCELLED"]


def test_an_error_while_executing_a_cancelled_run_leaves_it_cancelled(
    app: Context,
    dispatcher: Dispatcher,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: an error raised while a run was executed ended it FAILED even when it
    had been cancelled meanwhile — so it was retried and reported as a failure."""
    from fastflow.runs import runner

    make_pipeline("pay", "print('paid')\n", '{"retries": {"max": 2, "delay_seconds": 0}}')
    cancelled = queue.enqueue(app.db, "pay", "api")

    def cancelled_then_broken(*args: object, **kwargs: object) -> None:
        event = kwargs["cancel"]
        assert isinstance(event, threading.Event)
        event.set()  # the cancel arrives, then something breaks
        raise RuntimeError("the database went away")

    monkeypatch.setattr(runner, "execute", cancelled_then_broken)
    dispatcher.ensure_running()
    (run,) = _final(app, "pay", 1)
    assert (run.id, run.status) == (cancelled, "CANCELLED")
    assert "fastflow could not execute the run: the database went away" in (
        run.failure_reason or ""
    )
    wait_until(lambda: dispatcher.active == 0, 30, "the dispatcher to finish the run")
    assert len(_runs(app, "pay")) == 1  # no retry of a cancelled run


def test_an_error_after_a_cancel_asked_in_the_database_leaves_the_run_cancelled(
    app: Context,
    dispatcher: Dispatcher,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: a cancel requested in the database (another server's API) but not yet
    seen by this dispatcher's watch was lost when an error ended the run: FAILED, and
    retried."""
    from fastflow.runs import runner

    make_pipeline("pay", "print('paid')\n", '{"retries": {"max": 2, "delay_seconds": 0}}')
    run_id = queue.enqueue(app.db, "pay", "api")

    def asked_then_broken(*args: object, **kwargs: object) -> None:
        assert queue.cancel(app.db, run_id) == "requested"  # claimed: its server must stop it
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(runner, "execute", asked_then_broken)
    dispatcher.ensure_running()
    (run,) = _final(app, "pay", 1)
    assert (run.id, run.status) == (run_id, "CANCELLED")
