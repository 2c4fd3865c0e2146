"""Runs deleted by retention stay in the Runs list on request: ``GET
/api/runs?include_archived=true`` and ``fastflow runs --include-archived`` merge them
(from the archive ledger, ``row_deleted: true``) with the runs, newest first, with
``limit``/``offset`` counting both."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.api import schemas
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import views as runviews
from fastflow.server import create_app
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, run_row, seed_series


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(f"{n:08x}-0000-4000-8000-000000000000")


# (id, pipeline, days ago, status); rows and ledger-only entries interleave in time, and
# two runs started at the same instant are ordered by id (as the plain list does)
ROWS = [(_id(1), "etl", 1, "SUCCESS"), (_id(2), "load", 2, "FAILED"), (_id(3), "etl", 3, "SUCCESS")]
ROWS += [(_id(0x50), "etl", 5, "SUCCESS")]
GONE = [
    (_id(4), "etl", 4, "SUCCESS"),
    (_id(0x40), "etl", 5, "SUCCESS"),
    (_id(6), "etl", 6, "FAILED"),
]
ALL_NEWEST_FIRST = [_id(1), _id(2), _id(3), _id(4), _id(0x40), _id(0x50), _id(6)]


def _entry(rid: uuid.UUID, pipeline: str, days: int, status: str, **extra: Any) -> ArchivedRun:
    started = NOW - timedelta(days=days)
    return ArchivedRun(
        run_id=rid,
        pipeline_name=pipeline,
        status=status,
        triggered_by="schedule",
        started_at=started,
        finished_at=started + timedelta(seconds=3),
        exit_code=0 if status == "SUCCESS" else 1,
        bucket="bucket",
        log_key=f"pipeline-logs/{pipeline}/{rid}/run.log",
        log_size=10,
        log_sha256="ab" * 32,
        archived_at=NOW,
        **extra,
    )


def _seed(ctx: Context) -> None:
    with ctx.db.session() as s:
        for rid, pipeline, days, status in ROWS:
            started = NOW - timedelta(days=days)
            s.add(
                PipelineRun(
                    id=rid,
                    pipeline_name=pipeline,
                    status=status,
                    triggered_by="schedule",
                    started_at=started,
                    finished_at=started + timedelta(seconds=3),
                    exit_code=0 if status == "SUCCESS" else 1,
                    log_file=f"{pipeline}/{rid}/run.log",
                    metrics_file=None,
                )
            )
        # the newest run's full log was archived before truncation: its row stays
        s.add(_entry(_id(1), "etl", 1, "SUCCESS", reason="truncate_log", log_truncated_at=NOW))
        for rid, pipeline, days, status in GONE:
            s.add(_entry(rid, pipeline, days, status, reason="retention", local_deleted_at=NOW))


def _ids(items: list[dict[str, Any]]) -> list[uuid.UUID]:
    return [uuid.UUID(item["id"]) for item in items]


def _check_merge(ctx: Context) -> None:
    plain = runviews.list_views(ctx)
    assert _ids(plain) == [rid for rid in ALL_NEWEST_FIRST if rid in {r[0] for r in ROWS}]
    merged = runviews.list_views(ctx, include_archived=True)
    assert _ids(merged) == ALL_NEWEST_FIRST
    gone_ids = {g[0] for g in GONE}
    for item in merged:
        deleted = uuid.UUID(item["id"]) in gone_ids
        assert item["row_deleted"] is deleted
        assert item["archived"] is (deleted or item["id"] == str(_id(1)))
    pages = [
        runviews.list_views(ctx, include_archived=True, limit=2, offset=offset)
        for offset in range(0, 8, 2)
    ]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [rid for page in pages for rid in _ids(page)] == ALL_NEWEST_FIRST
    tail = runviews.list_views(ctx, include_archived=True, limit=3, offset=3)
    assert _ids(tail) == ALL_NEWEST_FIRST[3:6]
    etl = runviews.list_views(ctx, include_archived=True, pipeline="etl")
    assert _ids(etl) == [rid for rid in ALL_NEWEST_FIRST if rid != _id(2)]
    failed = runviews.list_views(ctx, include_archived=True, status="FAILED")
    assert _ids(failed) == [_id(2), _id(6)]


def test_merged_list_on_sqlite(app: Context) -> None:
    _seed(app)
    _check_merge(app)


def test_merged_list_on_postgres(pg_url: str, ff_env: dict[str, str]) -> None:
    ctx = bootstrap(load_settings(database_url=pg_url))
    try:
        _seed(ctx)
        _check_merge(ctx)
    finally:
        ctx.db.dispose()


@pytest.fixture
def client(app: Context) -> Iterator[tuple[TestClient, dict[str, str]]]:
    _seed(app)
    viewer = {"Authorization": f"Bearer {accounts.create_token(app.db, 'v', 'viewer')}"}
    yield TestClient(create_app(app, schedule=False)), viewer


def test_api_include_archived(client: tuple[TestClient, dict[str, str]]) -> None:
    http, viewer = client
    plain = http.get("/api/runs", headers=viewer).json()
    assert all(not r["row_deleted"] for r in plain) and len(plain) == len(ROWS)
    res = http.get("/api/runs?include_archived=true", headers=viewer)
    assert res.status_code == 200
    merged = res.json()
    assert _ids(merged) == ALL_NEWEST_FIRST
    gone = next(r for r in merged if r["id"] == str(_id(4)))
    assert gone["row_deleted"] is True and gone["archived"] is True
    assert gone["log_file"] is None and gone["archive"]["log_key"].endswith("/run.log")
    assert schemas.RunListOut.model_validate(merged).model_dump(mode="json") == merged
    page = http.get("/api/runs?include_archived=true&limit=2&offset=3", headers=viewer).json()
    assert _ids(page) == ALL_NEWEST_FIRST[3:5]
    failed = http.get("/api/runs?include_archived=true&status=FAILED", headers=viewer).json()
    assert _ids(failed) == [_id(2), _id(6)]
    one = http.get("/api/runs?include_archived=true&pipeline_name=load", headers=viewer).json()
    assert _ids(one) == [_id(2)]


def test_cli_include_archived(app: Context) -> None:
    _seed(app)
    plain = run_cli("runs", "--json")
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(plain.stdout)) == len(ROWS)
    merged = run_cli("runs", "--include-archived", "--json")
    assert merged.returncode == 0, merged.stderr
    items = json.loads(merged.stdout)
    assert _ids(items) == ALL_NEWEST_FIRST
    assert [r["row_deleted"] for r in items].count(True) == len(GONE)
    limited = json.loads(run_cli("runs", "--include-archived", "--limit", "2", "--json").stdout)
    assert _ids(limited) == ALL_NEWEST_FIRST[:2]
    table = run_cli("runs", "--include-archived", "--pipeline", "etl")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == [
        str(rid) for rid in ALL_NEWEST_FIRST if rid != _id(2)
    ]
    marked = {line.split()[0] for line in lines if line.endswith("archived")}
    assert marked == {str(g[0]) for g in GONE}


def test_a_run_deleted_by_retention_stays_listed(s3: S3Env, ff_env: dict[str, str]) -> None:
    settings = load_settings(**{k.lower(): v for k, v in s3.env().items()}, log_retention_runs=1)
    ctx = bootstrap(settings)
    try:
        old, new = seed_series(ctx, "etl", 2)
        assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
        assert run_row(ctx, old.id) is None
        assert _ids(runviews.list_views(ctx)) == [new.id]
        merged = runviews.list_views(ctx, include_archived=True)
        assert _ids(merged) == [new.id, old.id]
        assert merged[1]["row_deleted"] is True and merged[1]["archived"] is True
    finally:
        ctx.db.dispose()


def test_runs_page_lists_archived_runs_by_default_and_opens_short_ids(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    http, _ = client
    app_ctx: Context = http.app.state.ctx  # type: ignore[attr-defined]
    accounts.create_user(app_ctx.db, "pat", "a-long-password", "viewer")
    login = http.post("/api/auth/login", json={"username": "pat", "password": "a-long-password"})
    assert login.status_code == 200, login.text
    viewer: dict[str, str] = {}  # pages need the session cookie, which the client keeps
    page = http.get("/runs", headers=viewer)
    assert page.status_code == 200
    for rid, *_ in GONE:
        assert f'data-run-id="{rid}"' in page.text
    assert page.text.count("deleted locally</span>") == len(GONE)
    hidden = http.get("/runs?include_archived=false", headers=viewer).text
    assert all(f'data-run-id="{rid}"' not in hidden for rid, *_ in GONE)
    assert all(f'data-run-id="{rid}"' in hidden for rid, *_ in ROWS)
    short = str(_id(6))[:8]
    opened = http.get(f"/runs/{short}", headers=viewer)
    assert opened.status_code == 200 and str(_id(6)) in opened.text
    assert "read back from the archive" in opened.text
