"""A Fast-Flow pipeline folder is scheduled, retried and chained exactly like the same
pipeline written with fastflow's own keys (injected schedule clock, real runs)."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from fastflow.orchestration.dispatcher import Dispatcher
from fastflow.orchestration.ticker import fire_due
from fastflow.runs import pipelines
from tests.conftest import MakePipeline, wait_until

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FLAKY = """
import pathlib, sys
state = pathlib.Path({state!r})
n = int(state.read_text()) if state.exists() else 0
state.write_text(str(n + 1))
sys.exit(0 if n >= 1 else 2)
"""
FAST_FLOW = {
    "description": "Fast-Flow example",
    "schedule_cron": "0 9 * * *",
    "retry_attempts": 2,
    "retry_strategy": {"type": "fixed_delay", "delay": 0},
    "max_instances": 1,
    "downstream_triggers": [{"pipeline": "{down}", "on_success": True, "on_failure": False}],
    "default_env": {"LOG_LEVEL": "INFO"},
}
NATIVE = {
    "description": "native",
    "schedules": [{"cron": "0 9 * * *"}],
    "retries": {"max": 2, "delay_seconds": 0, "backoff": "fixed"},
    "max_instances": 1,
    "triggers": {"on_success": ["{down}"]},
    "env": {"LOG_LEVEL": "INFO"},
}


def _history(ctx: Context, names: tuple[str, str]) -> list[tuple[str, str, int, str]]:
    with ctx.db.session() as s:
        rows = s.query(PipelineRun).filter(PipelineRun.pipeline_name.in_(names)).all()
    rows.sort(key=lambda r: (r.pipeline_name != names[0], r.attempt or 1))
    return [
        ("up" if r.pipeline_name == names[0] else "down", r.status, r.attempt or 1, r.triggered_by)
        for r in rows
    ]


def _chain_done(ctx: Context, names: tuple[str, str]) -> bool:
    return any(h[0] == "down" and h[1] == "SUCCESS" for h in _history(ctx, names))


def test_fast_flow_and_native_forms_behave_the_same(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    histories = []
    for form, config in (("ff", FAST_FLOW), ("native", NATIVE)):
        down = f"{form}_down"
        make_pipeline(down)
        text = json.dumps(config).replace("{down}", down)
        make_pipeline(f"{form}_up", FLAKY.format(state=str(tmp_path / form)), text)
        p = pipelines.load(app.settings.pipelines_dir, f"{form}_up")
        (spec,) = p.config.schedules
        fire_due(app, p, spec, T0 - timedelta(minutes=1))  # first sight: baseline
        assert fire_due(app, p, spec, T0 + timedelta(seconds=30)) == "queued"
        d = Dispatcher(app)
        d.ensure_running()
        try:
            names = (f"{form}_up", down)
            wait_until(functools.partial(_chain_done, app, names), 60, f"the {form} chain")
        finally:
            d.stop()
        histories.append(_history(app, (f"{form}_up", down)))
    fast_flow, native = histories
    assert (
        fast_flow
        == native
        == [
            ("up", "FAILED", 1, "schedule"),
            ("up", "SUCCESS", 2, "retry"),
            ("down", "SUCCESS", 1, "upstream"),
        ]
    )


def test_a_named_schedule_applies_its_own_timeout(
    app: Context, make_pipeline: MakePipeline
) -> None:
    make_pipeline(
        "named",
        "import time\ntime.sleep(60)\n",
        json.dumps(
            {
                "timeout": 0,
                "schedules": [{"id": "prod", "schedule_interval_seconds": 60, "timeout": 1}],
            }
        ),
    )
    p = pipelines.load(app.settings.pipelines_dir, "named")
    (spec,) = p.config.schedules
    fire_due(app, p, spec, T0)
    assert fire_due(app, p, spec, T0 + timedelta(seconds=60)) == "queued"
    d = Dispatcher(app)
    d.ensure_running()
    try:
        wait_until(
            lambda: [r[1] for r in _history(app, ("named", "none"))] == ["TIMEOUT"],
            30,
            "the schedule's timeout",
        )
    finally:
        d.stop()
    with app.db.session() as s:
        (run,) = s.query(PipelineRun).filter(PipelineRun.pipeline_name == "named").all()
    assert run.run_config_id == "prod" and run.triggered_by == "schedule"
