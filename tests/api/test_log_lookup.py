"""How ``GET /api/runs/{id}/logs`` finds a log: a full run id is taken without a lookup
(after authentication), a short one is resolved in the database; the run's file columns
and its ledger entry are read in one Core query (``ledger.locate``) on every request.
Nothing is cached: a run archived, re-archived or deleted between two requests is
answered as it is now, and a revoked token reads nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import update

from fastflow import accounts
from fastflow.archive import ledger
from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import LogNotAvailable, RunNotFound
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import readback
from fastflow.server import create_app
from tests.conftest import tune
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, run_row, seed_run

COLUMNS = [attr.key for attr in sa_inspect(ArchivedRun).column_attrs]


def _entry(rid: uuid.UUID, **extra: Any) -> ArchivedRun:
    return ArchivedRun(
        run_id=rid,
        pipeline_name="etl",
        status="SUCCESS",
        triggered_by="schedule",
        started_at=NOW - timedelta(days=2),
        finished_at=NOW - timedelta(days=2) + timedelta(seconds=3),
        exit_code=0,
        bucket="bucket",
        log_key=f"pipeline-logs/etl/{rid}/run.log.zst",
        log_size=7,
        log_sha256="ab" * 32,
        encoding="zstd",
        log_original_size=70,
        log_original_sha256="cd" * 32,
        archived_at=NOW,
        **extra,
    )


def _check_locate(ctx: Context) -> None:
    """``locate`` reads what ``runs.get`` and ``ledger.get`` read, in every state."""
    local = seed_run(ctx, "etl", NOW)  # a row, no entry
    truncated = seed_run(ctx, "etl", NOW - timedelta(days=1))  # a row and an entry
    gone = uuid.uuid4()  # an entry only: the row was deleted by retention
    with ctx.db.session() as s:
        s.add(_entry(truncated.id, reason="truncate_log", log_truncated_at=NOW))
        s.add(_entry(gone, reason="retention", local_deleted_at=NOW))
    for rid in (local.id, truncated.id, gone, uuid.uuid4()):
        run, entry = ledger.locate(ctx.db, rid)
        row, stored = run_row(ctx, rid), ledger.get(ctx.db, rid)
        if row is None:
            assert run is None
        else:
            assert run == (
                row.pipeline_name,
                row.log_file,
                row.metrics_file,
                row.status,
                row.failure_reason,
            )
        if stored is None:
            assert entry is None
        else:
            assert entry is not None
            for column in COLUMNS:
                assert getattr(entry, column) == getattr(stored, column), column
            assert entry.original("log") == stored.original("log") == (70, "cd" * 32)
            assert entry.full_log_archived is stored.full_log_archived
    assert ledger.locate(ctx.db, truncated.id)[1] is not None
    assert ledger.locate(ctx.db, truncated.id)[1].full_log_archived  # type: ignore[union-attr]
    assert ledger.locate(ctx.db, gone)[0] is None


def test_locate_reads_the_row_and_the_entry_on_sqlite(app: Context) -> None:
    _check_locate(app)


def test_locate_reads_the_row_and_the_entry_on_postgres(
    pg_url: str, ff_env: dict[str, str]
) -> None:
    ctx = bootstrap(load_settings(database_url=pg_url))
    try:
        _check_locate(ctx)
    finally:
        ctx.db.dispose()


def test_each_request_sees_the_log_where_it_is_now(
    s3_app: Context, s3: S3Env, tmp_path: Path
) -> None:
    """One server, one run: local, then archived with its row deleted, then its archived
    object replaced (as a rebuild from a newer manifest does) — every request reads the
    row and the ledger afresh."""
    ctx = s3_app
    log = b"".join(f"line {i} of the first copy\n".encode() for i in range(500))
    old = seed_run(ctx, "etl", NOW - timedelta(days=2), log=log)
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    token = accounts.create_token(ctx.db, "viewer", "viewer")
    http = TestClient(create_app(ctx, schedule=False))
    viewer = {"Authorization": f"Bearer {token}"}
    path = f"/api/runs/{old.id}/logs?tail_bytes=100"

    res = http.get(path, headers=viewer)
    assert res.status_code == 200 and res.content == log[-100:]
    assert res.headers["x-log-source"] == "local"
    assert res.headers["x-log-size"] == str(len(log))

    run_pass(tune(ctx, log_retention_runs=1), "test", now=NOW)
    assert run_row(ctx, old.id) is None and not old.log.exists()
    res = http.get(path, headers=viewer)
    assert res.status_code == 200 and res.content == log[-100:]
    assert res.headers["x-log-source"] == "archive"
    assert res.headers["x-log-size"] == str(len(log))
    assert res.headers["cache-control"] == "no-store"

    # the entry now names another (compressed) object with other bytes
    other = b"".join(f"line {i} of the rebuilt copy\n".encode() for i in range(300))
    source = tmp_path / "rebuilt.log"
    source.write_bytes(other)
    store = archive.S3Store(tune(ctx, s3_compression="zstd").settings)
    key = store.key_for("etl", str(old.id), "run.log")
    stored = store.put_verified(key, source, {})
    with ctx.db.session() as s:
        s.execute(
            update(ArchivedRun)
            .where(ArchivedRun.run_id == old.id)
            .values(**ledger.object_values({"run.log": stored}, "zstd"))
        )
    res = http.get(path, headers=viewer)
    assert res.status_code == 200 and res.content == other[-100:]
    assert res.headers["x-log-source"] == "archive"
    assert res.headers["x-log-size"] == str(len(other))
    whole = http.get(f"/api/runs/{str(old.id)[:8]}/logs", headers=viewer)
    assert whole.status_code == 200 and whole.content == other

    # a token revoked between two requests reads nothing more
    assert accounts.revoke_token(ctx.db, "viewer") == 1
    res = http.get(path, headers=viewer)
    assert res.status_code == 401 and b"rebuilt" not in res.content


def test_run_ids_are_resolved_only_for_an_authenticated_caller(app: Context) -> None:
    first = seed_run(app, "etl", NOW)
    token = accounts.create_token(app.db, "viewer", "viewer")
    http = TestClient(create_app(app, schedule=False))
    viewer = {"Authorization": f"Bearer {token}"}
    unknown = uuid.uuid4()
    for rid in (str(first.id), str(unknown), str(first.id)[:8], "not-a-run-id"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            res = http.get(f"/api/runs/{rid}/logs?tail_bytes=10", headers=headers)
            assert res.status_code == 401, (rid, headers)
            assert first.log_bytes[-10:] not in res.content

    ok = http.get(f"/api/runs/{first.id}/logs?tail_bytes=10", headers=viewer)
    assert ok.status_code == 200 and ok.content == first.log_bytes[-10:]
    # the id as the UI links it, with surrounding blanks, upper case: the same run
    spaced = http.get(f"/api/runs/%20{str(first.id).upper()}%20/logs", headers=viewer)
    assert spaced.status_code == 200 and spaced.content == first.log_bytes
    short = http.get(f"/api/runs/{str(first.id)[:8]}/logs?tail_bytes=10", headers=viewer)
    assert short.status_code == 200 and short.content == first.log_bytes[-10:]
    missing = http.get(f"/api/runs/{unknown}/logs?tail_bytes=10", headers=viewer)
    assert missing.status_code == 404 and str(unknown) in missing.json()["detail"]
    assert http.get("/api/runs/not-a-run-id/logs", headers=viewer).status_code == 422
    assert http.get(f"/api/runs/{str(unknown)[:8]}/logs", headers=viewer).status_code == 404

    # two runs sharing the first 8 hex digits: a short id naming both is ambiguous
    twin = uuid.UUID(str(first.id)[:8] + str(uuid.uuid4())[8:])
    with app.db.session() as s:
        s.add(
            PipelineRun(
                id=twin,
                pipeline_name="etl",
                status="SUCCESS",
                triggered_by="schedule",
                started_at=NOW,
            )
        )
    assert http.get(f"/api/runs/{str(first.id)[:8]}/logs", headers=viewer).status_code == 409
    # a run without any log: its row exists, so 404 says the log is not available
    none = http.get(f"/api/runs/{twin}/logs", headers=viewer)
    assert none.status_code == 404 and "neither local nor archived" in none.json()["detail"]


def test_located_values_feed_the_reader_without_another_lookup(
    app: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``entry_known`` the reader trusts what ``locate`` found (also "no entry"),
    except when the local file the row names has gone since: the ledger is read again
    (retention writes the entry before it deletes the file)."""
    run = seed_run(app, "etl", NOW)
    found = readback.locate(app, run.id)
    assert found.run is not None and found.entry is None
    lookups: list[uuid.UUID] = []
    real = readback.ledger_entry

    def counted(ctx: Context, rid: uuid.UUID) -> ArchivedRun | None:
        lookups.append(rid)
        return real(ctx, rid)

    monkeypatch.setattr(readback, "ledger_entry", counted)
    source = readback.open_log(app, run.id, found.run, 5, entry=None, entry_known=True)
    assert b"".join(source.chunks) == run.log_bytes[-5:]
    assert lookups == []
    gone = uuid.uuid4()
    with pytest.raises(RunNotFound):
        readback.open_log(app, gone, None, entry=None, entry_known=True)
    assert lookups == []

    # archived and deleted between the lookup and the read (no S3 here: the reader says
    # where the log is archived, which it learnt from the second lookup)
    with app.db.session() as s:
        s.add(_entry(run.id, reason="retention"))
    run.log.unlink()
    with pytest.raises(LogNotAvailable, match="is archived at s3://bucket/"):
        readback.open_log(app, run.id, found.run, entry=None, entry_known=True)
    assert lookups == [run.id]


def test_a_folder_swapped_for_a_link_after_the_check_serves_nothing_from_outside(
    app: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write in LOGS_DIR swaps a run's folder for a link to a folder
    outside just after the path was checked: the API read opened by path and served the
    file outside LOGS_DIR. It now opens through a walk that follows no link: the
    request is refused (400), and no byte from outside is sent."""
    from fastflow.runs import files as logfiles

    run = seed_run(app, "etl", NOW)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.log").write_bytes(b"SECRET FROM OUTSIDE LOGS_DIR\n")
    token = accounts.create_token(app.db, "viewer", "viewer")
    http = TestClient(create_app(app, schedule=False))
    viewer = {"Authorization": f"Bearer {token}"}
    real_resolve = logfiles.resolve

    def resolve_then_swap(root: Path, rel: str) -> Path:
        found = real_resolve(root, rel)
        if found == run.log and run.log.parent.is_dir() and not run.log.parent.is_symlink():
            run.log.parent.rename(run.log.parent.with_name("moved"))
            run.log.parent.symlink_to(outside, target_is_directory=True)
        return found

    monkeypatch.setattr(logfiles, "resolve", resolve_then_swap)
    res = http.get(f"/api/runs/{run.id}/logs", headers=viewer)
    assert res.status_code == 400, res.text
    assert b"SECRET" not in res.content and "symbolic link" in res.json()["detail"]
    assert run.log.parent.is_symlink()  # the swap did happen before the read
