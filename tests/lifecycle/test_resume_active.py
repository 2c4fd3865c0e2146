"""The resume phase never touches an active run: a pending ledger entry for a run that is
RUNNING (one no pass wrote — e.g. indexed by rebuild-index from a manifest someone else
put into the bucket) leaves the run's files and row alone. An outside audit had a
forged entry make a pass delete a running run's log mid-run; the rest of its output
was lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from fastflow.config import load_settings
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.lifecycle.cleanup import run_pass
from tests.seeding import NOW, ledger, run_row, seed_run


def test_a_pending_entry_of_a_running_run_deletes_nothing(s3_app: Context) -> None:
    ctx = s3_app
    old = seed_run(ctx, "etl", NOW - timedelta(days=3))
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    data = ctx.settings.model_dump()
    data.update(log_retention_runs=1)
    keep_one = Context(settings=load_settings(**data), db=ctx.db)
    assert run_pass(keep_one, "test", now=NOW).deleted_runs == 1  # archived and deleted
    assert run_row(ctx, old.id) is None and not old.log.exists()

    # the same run is back and running, its files on disk, its archive entry pending
    again = seed_run(ctx, "etl", NOW, status="RUNNING", log=old.log_bytes)
    with ctx.db.session() as s:
        s.execute(update(PipelineRun).where(PipelineRun.id == again.id).values(id=old.id))
        s.execute(
            update(ArchivedRun).where(ArchivedRun.run_id == old.id).values(local_deleted_at=None)
        )
    old.log.parent.mkdir(parents=True, exist_ok=True)
    again.log.rename(old.log)
    again.metrics.rename(old.metrics)

    summary = run_pass(ctx, "test", now=NOW)

    assert old.log.read_bytes() == old.log_bytes and old.metrics.exists()
    row = run_row(ctx, old.id)
    assert row is not None and row.status == "RUNNING"
    assert ledger(ctx)[old.id].local_deleted_at is None  # still pending, untouched
    assert summary.skipped_runs == 1 and summary.deleted_runs == 0
