"""Scheduled cleanup passes run in a worker thread on the cron schedule."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from fastflow.context import Context
from fastflow.lifecycle.cleanup import PassSummary
from fastflow.lifecycle.scheduler import CleanupScheduler, next_fire
from tests.seeding import run_row, seed_series

BERLIN = timezone(timedelta(hours=1))


def test_next_fire_uses_local_time() -> None:
    after = datetime(2026, 3, 1, 1, 59, 30, tzinfo=BERLIN)
    assert next_fire("0 2 * * *", after) == datetime(2026, 3, 1, 2, 0, tzinfo=BERLIN)
    assert next_fire("0 2 * * *", after.replace(hour=2, minute=0, second=0)) == datetime(
        2026, 3, 2, 2, 0, tzinfo=BERLIN
    )


def test_scheduler_runs_a_pass_when_due(app: Context) -> None:
    ctx = Context(
        settings=app.settings.model_copy(
            update={"log_retention_runs": 1, "cleanup_schedule": "* * * * *"}
        ),
        db=app.db,
    )
    old, new = seed_series(ctx, "p", 2)
    done = threading.Event()
    seen: list[PassSummary] = []

    def on_pass(summary: object) -> None:
        assert isinstance(summary, PassSummary)
        seen.append(summary)
        done.set()

    # the injected clock says a minute boundary is 50 ms away
    base = datetime.now().astimezone().replace(second=59, microsecond=950_000)
    scheduler = CleanupScheduler(ctx, on_pass=on_pass, clock=lambda: base)
    scheduler.start()
    try:
        assert done.wait(30), "no scheduled pass ran"
    finally:
        scheduler.stop()
    assert seen[0].trigger == "schedule" and seen[0].deleted_runs == 1
    assert run_row(ctx, old.id) is None and run_row(ctx, new.id) is not None
