"""The cleanup pass's chunked path (``lifecycle.batch``): one ledger transaction and one
delete transaction per chunk must keep every per-run guarantee — a failure, a changed
file or a pin touches its own run only, and nothing is deleted before its ledger row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle import batch as batches
from fastflow.lifecycle import deletion as reaper
from fastflow.lifecycle import selection
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.executor import PassRun, pipeline_policy
from fastflow.lifecycle.policy import Action
from fastflow.lifecycle.summary import PassSummary
from fastflow.runs import pins
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, Seeded, failures, keys, ledger, run_row, seed_run


@pytest.fixture
def ctx(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_READ_TIMEOUT", "5")
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    monkeypatch.setenv("LOG_RETENTION_KEEP_LAST_SUCCESS", "false")
    context = bootstrap(load_settings())
    yield context
    context.db.dispose()


def _seed(ctx: Context, n: int) -> list[Seeded]:
    """``n`` runs of one pipeline, oldest first; retention keeps only the newest."""
    return [seed_run(ctx, "etl", NOW - timedelta(hours=n - i)) for i in range(n)]


def _planned(ctx: Context) -> list[Action]:
    policy = pipeline_policy(ctx.settings, "etl")
    return [a for b in selection.deletion_candidates(ctx.db, "etl", policy, NOW) for a in b]


def _pass_run(ctx: Context) -> tuple[PassRun, PassSummary]:
    summary = PassSummary(trigger="test")
    return PassRun(ctx, summary, NOW, archive.open_store(ctx.settings), None), summary


def test_many_chunks_archive_and_delete_every_due_run(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "CHUNK", 4)
    runs = _seed(ctx, 11)  # 10 due: chunks of 4 + 4 + 2
    p, summary = _pass_run(ctx)
    planned = _planned(ctx)
    commits: list[int] = []

    def count(conn: Any) -> None:
        commits.append(1)

    event.listen(ctx.db.engine, "commit", count)
    try:
        with ThreadPoolExecutor(4) as pool:
            batches.run_actions(p, pool, planned)
    finally:
        event.remove(ctx.db.engine, "commit", count)

    assert (summary.archived_runs, summary.deleted_runs, summary.backup_failures) == (10, 10, 0)
    assert all(run_row(ctx, r.id) is None and not r.log.exists() for r in runs[:10])
    assert run_row(ctx, runs[10].id) is not None and runs[10].log.exists()
    entries = ledger(ctx)
    assert all(entries[r.id].local_deleted_at is not None for r in runs[:10])
    assert len(keys(s3.client(), s3.bucket)) == 20  # log + metrics of each archived run
    # per chunk: two reads (pins, ledger), the ledger commit, the delete commit and the
    # failure resolution — not five sessions per run as before batching
    assert len(commits) <= 3 * 5


def test_a_failed_upload_fails_only_its_own_run(ctx: Context, s3: S3Env) -> None:
    runs = _seed(ctx, 5)
    bad = runs[2].id
    s3.proxy.fail(403, match=lambda method, path: method == "PUT" and str(bad) in path)

    summary = run_pass(ctx, "test", now=NOW)

    assert (summary.archived_runs, summary.deleted_runs, summary.backup_failures) == (3, 3, 1)
    assert [f.run_id for f in failures(ctx)] == [bad]
    assert runs[2].log.read_bytes() == runs[2].log_bytes and run_row(ctx, bad) is not None
    assert bad not in ledger(ctx)
    assert all(run_row(ctx, r.id) is None for r in (runs[0], runs[1], runs[3]))


def test_a_file_changed_after_its_upload_is_kept_and_the_rest_of_the_chunk_goes(
    ctx: Context,
) -> None:
    runs = _seed(ctx, 4)
    p, summary = _pass_run(ctx)
    planned = _planned(ctx)
    assert [a.run.id for a in planned] == [r.id for r in runs[:3]]
    ready = [batches._prepare(p, a, False, {}) for a in planned]  # uploaded and verified
    with runs[1].log.open("ab") as f:  # the pipeline's tail writer was late
        f.write(b"one more line\n")

    batches._finish(p, ready)

    assert (summary.archived_runs, summary.deleted_runs, summary.backup_failures) == (3, 2, 1)
    assert runs[1].log.read_bytes() == runs[1].log_bytes + b"one more line\n"
    assert run_row(ctx, runs[1].id) is not None
    entry = ledger(ctx)[runs[1].id]
    assert entry.local_deleted_at is None  # archived, local copy still pending
    assert [f.run_id for f in failures(ctx)] == [runs[1].id]
    assert "changed after it was archived" in failures(ctx)[0].error_message
    for r in (runs[0], runs[2]):
        assert run_row(ctx, r.id) is None and not r.log.exists()
        assert ledger(ctx)[r.id].local_deleted_at is not None


def test_a_run_pinned_between_upload_and_delete_keeps_everything(ctx: Context) -> None:
    runs = _seed(ctx, 4)
    p, summary = _pass_run(ctx)
    ready = [batches._prepare(p, a, False, {}) for a in _planned(ctx)]
    pins.pin(ctx.db, ctx.settings, runs[0].id, "audit", "auditor")

    batches._finish(p, ready)

    assert (summary.archived_runs, summary.deleted_runs, summary.kept_runs) == (3, 2, 1)
    assert runs[0].log.read_bytes() == runs[0].log_bytes and runs[0].metrics.exists()
    assert ledger(ctx)[runs[0].id].local_deleted_at is None
    assert summary.backup_failures == 0


def test_the_ledger_is_committed_before_any_file_is_deleted(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = _seed(ctx, 3)
    p, _ = _pass_run(ctx)
    ready = [batches._prepare(p, a, False, {}) for a in _planned(ctx)]
    seen: list[tuple[uuid.UUID, bool]] = []
    real = reaper.delete_files

    def watch(
        logs_root: Any, log_file: Any, metrics_file: Any, expect: Any = None, **kw: Any
    ) -> Any:
        rid = uuid.UUID(str(log_file).split("/")[-2])
        # another connection: only committed ledger rows are visible to it
        seen.append((rid, rid in ledger(ctx)))
        return real(logs_root, log_file, metrics_file, expect, **kw)

    monkeypatch.setattr(reaper, "delete_files", watch)
    batches._finish(p, ready)

    assert sorted(seen) == sorted((r.id, True) for r in runs[:2])
