"""A server that dies: its running runs are marked FAILED by another server and the runs
it had claimed but not started go back to the queue (PostgreSQL, runners on other
machines told apart by their liveness locks)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.db.models import PipelineRun, utcnow
from fastflow.runs import liveness
from fastflow.runs import store as runs


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
