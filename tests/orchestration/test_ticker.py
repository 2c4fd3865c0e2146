"""Schedule ticks become queued runs: injected clock for misfires and overlap, two
tickers on one PostgreSQL database for exactly-once, and a real `fastflow serve`."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun, ScheduleTick
from fastflow.orchestration.ticker import ScheduleLoop, fire_due
from fastflow.runs import pipelines
from tests.conftest import MakePipeline, wait_until
from tests.harness.ports import free_port

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _runs(ctx: Context) -> list[PipelineRun]:
    with ctx.db.session() as s:
        return list(s.query(PipelineRun).order_by(PipelineRun.scheduled_for).all())


def _ticks(ctx: Context) -> list[ScheduleTick]:
    with ctx.db.session() as s:
        return list(s.query(ScheduleTick).order_by(ScheduleTick.scheduled_for).all())


def _load(ctx: Context, name: str) -> pipelines.Pipeline:
    return pipelines.load(ctx.settings.pipelines_dir, name)


def test_first_sight_is_a_baseline_then_each_tick_queues_one_run(
    app: Context, make_pipeline: MakePipeline
) -> None:
    make_pipeline("every10", config='{"schedules": [{"interval_seconds": 10}]}')
    p = _load(app, "every10")
    (spec,) = p.config.schedules
    assert fire_due(app, p, spec, T0) == "baseline"
    assert fire_due(app, p, spec, T0 + timedelta(seconds=5)) == "idle"
    assert fire_due(app, p, spec, T0 + timedelta(seconds=10)) == "queued"
    assert fire_due(app, p, spec, T0 + timedelta(seconds=11)) == "idle"
    (run,) = _runs(app)
    assert run.status == "QUEUED" and run.triggered_by == "schedule"
    assert run.scheduled_for == T0 + timedelta(seconds=10) and run.schedule_key == "0"


def test_missed_ticks_coalesce_into_one_run_or_are_skipped_when_stale(
    app: Context, make_pipeline: MakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    make_pipeline(
        "hourly",
        config='{"schedules": [{"cron": "0 * * * *", "misfire_grace_seconds": 600}]}',
    )
    p = _load(app, "hourly")
    (spec,) = p.config.schedules
    caplog.set_level("INFO", logger="fastflow.orchestration")
    fire_due(app, p, spec, T0)  # baseline 12:00
    # the server was down 12:00-15:05: ticks 13:00, 14:00, 15:00; the latest is 5 min old
    assert fire_due(app, p, spec, T0 + timedelta(hours=3, minutes=5)) == "queued"
    (run,) = _runs(app)
    assert run.scheduled_for == T0 + timedelta(hours=3)
    # the three ticks are counted, the one that runs with them (an outside audit: "2")
    assert (
        "hourly/0: 3 ticks coalesced into one run (at 2026-12-01T15:00:00+00:00, the "
        "latest; 2 earlier not run)" in caplog.text
    )
    # down again until 17:30: the 16:00 and 17:00 ticks are older than the grace
    assert fire_due(app, p, spec, T0 + timedelta(hours=5, minutes=30)) == "stale"
    assert len(_runs(app)) == 1
    with app.db.session() as s:  # the 15:00 run has run meanwhile
        done = s.get(PipelineRun, run.id)
        assert done is not None
        done.status = "SUCCESS"
    assert fire_due(app, p, spec, T0 + timedelta(hours=6)) == "queued"  # 18:00 on time


def test_overlap_skip_and_queue(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline("skipper", config='{"schedules": [{"interval_seconds": 60}]}')
    make_pipeline(
        "queuer", config='{"schedules": [{"interval_seconds": 60}], "on_overlap": "queue"}'
    )
    for name in ("skipper", "queuer"):
        p = _load(app, name)
        (spec,) = p.config.schedules
        fire_due(app, p, spec, T0)
        with app.db.session() as s:  # one run of the pipeline is running already
            s.add(
                PipelineRun(
                    pipeline_name=name, status="RUNNING", triggered_by="manual", started_at=T0
                )
            )
        outcome = fire_due(app, p, spec, T0 + timedelta(seconds=60))
        assert outcome == ("skipped" if name == "skipper" else "queued")
    outcomes = {(t.pipeline_name, t.outcome) for t in _ticks(app)}
    assert ("skipper", "skipped") in outcomes and ("queuer", "queued") in outcomes


@pytest.mark.slow
def test_two_tickers_on_postgres_queue_each_tick_once(
    ff_env: dict[str, str],
    pg_url: str,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    # (``queue``: no run is dispatched here, and every tick must queue its own)
    make_pipeline("fast", config='{"schedules": [{"interval_seconds": 1}], "on_overlap": "queue"}')
    servers = [bootstrap(load_settings()) for _ in range(2)]
    loops = [ScheduleLoop(ctx) for ctx in servers]
    p = _load(servers[0], "fast")
    (spec,) = p.config.schedules
    fire_due(servers[0], p, spec, T0)
    start = threading.Barrier(2)

    def drive(loop: ScheduleLoop) -> None:
        start.wait()
        for second in range(1, 31):  # 30 s of ticks, both servers every half second
            for half in (0, 500_000):
                loop.run_once(T0 + timedelta(seconds=second, microseconds=half))

    threads = [threading.Thread(target=drive, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    times = [r.scheduled_for for r in _runs(servers[0])]
    assert len(times) == len(set(times)) == 30  # no duplicate, no gap
    assert times[0] == T0 + timedelta(seconds=1) and times[-1] == T0 + timedelta(seconds=30)
    for ctx in servers:
        ctx.db.dispose()


@pytest.mark.slow
def test_serve_runs_an_interval_schedule_in_real_time(
    ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    make_pipeline("tick", "print('tick')", '{"schedules": [{"interval_seconds": 1}]}')
    ctx = bootstrap(load_settings())
    server = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "serve", "--port", str(free_port())],
        env={**os.environ, **ff_env},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
    )
    try:
        wait_until(
            lambda: len([r for r in _runs(ctx) if r.status == "SUCCESS"]) >= 3,
            60,
            "three scheduled runs",
        )
    finally:
        server.terminate()
        server.wait(30)
    done = [r for r in _runs(ctx) if r.status == "SUCCESS"]
    assert all(r.triggered_by == "schedule" and r.scheduled_for for r in done)
    gaps = [
        (b.scheduled_for - a.scheduled_for).total_seconds()
        for a, b in itertools.pairwise(done)
        if a.scheduled_for and b.scheduled_for
    ]
    assert all(g >= 1 for g in gaps)
    ctx.db.dispose()


def test_overlap_skip_counts_runs_waiting_for_a_slot(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: with every slot of the server taken, each tick of a
    ``skip`` pipeline queued another run (only PENDING/RUNNING counted): 10 queued in 22 s,
    then 20 ran back to back. A tick now finds the queued run and is skipped."""
    make_pipeline("sk", config='{"schedules": [{"interval_seconds": 2}]}')
    p = _load(app, "sk")
    (spec,) = p.config.schedules
    assert fire_due(app, p, spec, T0) == "baseline"
    assert fire_due(app, p, spec, T0 + timedelta(seconds=2)) == "queued"  # waits: no slot
    for k in range(2, 12):
        assert fire_due(app, p, spec, T0 + timedelta(seconds=2 * k)) == "skipped"
    assert [r.status for r in _runs(app)] == ["QUEUED"]


def test_a_malformed_pipeline_json_stops_no_other_schedule(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: ``"schedules": ["*/5 * * * *"]`` in one pipeline raised
    AttributeError in the schedule thread, which died: no schedule fired again until a
    restart. The bad pipeline is skipped; the others go on."""
    make_pipeline("good", config='{"schedules": [{"interval_seconds": 10}]}')
    make_pipeline("bad", config='{"schedules": ["*/5 * * * *"]}')
    loop = ScheduleLoop(app)
    assert [p.name for p in loop.pipelines()] == ["good"]
    assert loop.run_once(T0) == 0  # the baseline
    assert loop.run_once(T0 + timedelta(seconds=10)) == 1
    (run,) = _runs(app)
    assert run.pipeline_name == "good"


def test_a_schedule_without_an_id_keeps_its_own_timeout_and_retries(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """A schedule's own ``timeout`` and ``retry_attempts`` (Fast-Flow's per-schedule
    keys) were kept under its index but looked up by its ``id``: without an id, its runs
    got the pipeline's instead."""
    from fastflow.orchestration.followup import retry_spec

    config = '{"schedules": [{"interval_seconds": 10, "timeout": 7, "retry_attempts": 2}]}'
    make_pipeline("own", config=config)
    p = _load(app, "own")
    (spec,) = p.config.schedules
    assert fire_due(app, p, spec, T0) == "baseline"
    assert fire_due(app, p, spec, T0 + timedelta(seconds=10)) == "queued"
    (run,) = _runs(app)
    assert run.run_config_id == "0"
    assert p.config.schedule_timeouts[run.run_config_id] == 7
    assert retry_spec(p, run.run_config_id).max == 2
    make_pipeline("plain", config='{"schedules": [{"interval_seconds": 10}]}')
    q = _load(app, "plain")
    assert fire_due(app, q, q.config.schedules[0], T0) == "baseline"
    assert fire_due(app, q, q.config.schedules[0], T0 + timedelta(seconds=10)) == "queued"
    assert [r.run_config_id for r in _runs(app) if r.pipeline_name == "plain"] == [None]
