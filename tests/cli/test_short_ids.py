"""Short run ids: the 8 characters the UI shows (any unique prefix of at least 4 hex
digits) name a run in every CLI command that takes a RUN_ID and in ``/api/runs/{id}``;
runs deleted by retention but in the archive ledger count; an ambiguous prefix is an
error naming the candidates (exit 1 / HTTP 409)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import RunNotFound
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import files as logfiles
from fastflow.runs import store
from fastflow.server import create_app
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, run_row, seed_series

TWIN_A = uuid.UUID("abcd1234-0000-4000-8000-000000000001")
TWIN_B = uuid.UUID("abcd1234-1111-4000-8000-000000000002")
SINGLE = uuid.UUID("abce0000-2222-4000-8000-000000000003")
QUEUED = uuid.UUID("eeee0000-3333-4000-8000-000000000004")
GONE = uuid.UUID("dddd5678-4444-4000-8000-000000000005")  # only in the archive ledger


def _add_run(ctx: Context, rid: uuid.UUID, *, status: str = "SUCCESS", minutes: int = 0) -> None:
    started = NOW + timedelta(minutes=minutes)
    log_rel = logfiles.log_rel("etl", str(rid))
    path = ctx.settings.logs_root / log_rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"log of {rid}\n".encode())
    final = status not in ("QUEUED", "PENDING", "RUNNING")
    with ctx.db.session() as s:
        s.add(
            PipelineRun(
                id=rid,
                pipeline_name="etl",
                status=status,
                triggered_by="cli",
                started_at=started,
                finished_at=started + timedelta(seconds=3) if final else None,
                exit_code=0 if final else None,
                log_file=log_rel if final else None,
                metrics_file=None,
                queued_at=started if status == "QUEUED" else None,
            )
        )


def _add_ledger_only(ctx: Context, rid: uuid.UUID) -> None:
    with ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=rid,
                pipeline_name="etl",
                status="SUCCESS",
                triggered_by="schedule",
                started_at=NOW - timedelta(days=40),
                finished_at=NOW - timedelta(days=40) + timedelta(seconds=3),
                exit_code=0,
                bucket="bucket",
                log_key=f"pipeline-logs/etl/{rid}/run.log",
                log_size=10,
                log_sha256="ab" * 32,
                reason="retention",
                archived_at=NOW,
                local_deleted_at=NOW,
            )
        )


def _seed(ctx: Context) -> None:
    _add_run(ctx, TWIN_A, minutes=1)
    _add_run(ctx, TWIN_B, minutes=2)
    _add_run(ctx, SINGLE, minutes=3)
    _add_run(ctx, QUEUED, status="QUEUED", minutes=4)
    _add_ledger_only(ctx, GONE)


@pytest.fixture
def seeded(app: Context) -> Context:
    _seed(app)
    return app


# --- the lookup, on SQLite and PostgreSQL ---------------------------------------------------


def _check_lookup(ctx: Context) -> None:
    assert store.resolve_run_id(ctx.db, str(SINGLE)) == SINGLE
    assert store.resolve_run_id(ctx.db, "abce0000") == SINGLE
    assert store.resolve_run_id(ctx.db, "ABCE") == SINGLE
    assert store.resolve_run_id(ctx.db, "abcd1234-1") == TWIN_B  # dashes as the UI shows
    assert store.resolve_run_id(ctx.db, "dddd5678") == GONE  # deleted by retention
    with pytest.raises(store.AmbiguousRunId) as twins:
        store.resolve_run_id(ctx.db, "abcd1234")
    assert set(twins.value.candidates) == {TWIN_A, TWIN_B}
    assert str(TWIN_A) in str(twins.value) and str(TWIN_B) in str(twins.value)
    with pytest.raises(RunNotFound):
        store.resolve_run_id(ctx.db, "ffff0000")
    unknown = uuid.uuid4()  # a full id is taken as it is; its reader says "not found"
    assert store.resolve_run_id(ctx.db, str(unknown)) == unknown


def test_a_prefix_finds_one_run_among_rows_and_ledger(seeded: Context) -> None:
    _check_lookup(seeded)


def test_a_prefix_finds_one_run_on_postgres(pg_url: str, ff_env: dict[str, str]) -> None:
    ctx = bootstrap(load_settings(database_url=pg_url))
    try:
        _seed(ctx)
        _check_lookup(ctx)
    finally:
        ctx.db.dispose()


# --- the CLI --------------------------------------------------------------------------------


def test_logs_and_cancel_take_the_short_id(seeded: Context) -> None:
    shown = run_cli("logs", str(SINGLE)[:8])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"log of {SINGLE}\n"
    assert run_cli("logs", "abcd1234-1").stdout == f"log of {TWIN_B}\n"
    cancelled = run_cli("cancel", str(QUEUED)[:8])
    assert cancelled.returncode == 0, cancelled.stderr
    assert str(QUEUED) in cancelled.stderr
    row = run_row(seeded, QUEUED)
    assert row is not None and row.status == "CANCELLED"
    finished = run_cli("cancel", "abce0000")
    assert finished.returncode == 1 and "already finished" in finished.stderr


def test_an_ambiguous_prefix_names_the_candidates(seeded: Context) -> None:
    for args in (["logs", "abcd1234"], ["cancel", "abcd"], ["archive", "get", "abcd1234"]):
        res = run_cli(*args)
        assert res.returncode == 1, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "ambiguous" in lines[0] and str(TWIN_A) in lines[0] and str(TWIN_B) in lines[0]
        assert "Traceback" not in res.stderr
    row = run_row(seeded, TWIN_A)
    assert row is not None and row.status == "SUCCESS"


def test_unknown_and_malformed_ids_fail_with_one_line(seeded: Context) -> None:
    unknown = run_cli("logs", "ffff0000")
    assert unknown.returncode == 1 and "run ffff0000 not found" in unknown.stderr
    short = run_cli("logs", "abc")
    assert short.returncode == 1 and "not a valid run id" in short.stderr
    assert "Traceback" not in short.stderr + unknown.stderr


def test_runs_deleted_by_retention_are_found_by_prefix(
    s3: S3Env, ff_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(**{k.lower(): v for k, v in s3.env().items()}, log_retention_runs=1)
    ctx = bootstrap(settings)
    try:
        old, _ = seed_series(ctx, "etl", 2)
        assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
        assert run_row(ctx, old.id) is None
    finally:
        ctx.db.dispose()
    prefix = str(old.id)[:8]
    shown = run_cli("logs", prefix, env=s3.env())
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.encode() == old.log_bytes
    assert "read back from the archive" in shown.stderr
    out = tmp_path / "old.log"
    got = run_cli("archive", "get", prefix, "-o", str(out), env=s3.env())
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == old.log_bytes


# --- the API ----------------------------------------------------------------------------------


class Api:
    def __init__(self, ctx: Context) -> None:
        self.client = TestClient(create_app(ctx, schedule=False))
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'a', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}


@pytest.fixture
def api(seeded: Context) -> Iterator[Api]:
    yield Api(seeded)


def test_api_runs_routes_take_the_short_id(api: Api) -> None:
    one = api.client.get("/api/runs/abce0000", headers=api.viewer)
    assert one.status_code == 200 and one.json()["id"] == str(SINGLE)
    log = api.client.get("/api/runs/abce0000/logs", headers=api.viewer)
    assert log.status_code == 200 and log.text == f"log of {SINGLE}\n"
    metrics = api.client.get("/api/runs/abce0000/metrics", headers=api.viewer)
    assert metrics.status_code == 200 and metrics.json() == []
    gone = api.client.get("/api/runs/dddd5678", headers=api.viewer)
    assert gone.status_code == 200 and gone.json()["row_deleted"] is True
    assert gone.json()["id"] == str(GONE)
    cancel = api.client.post("/api/runs/eeee0000/cancel", headers=api.admin)
    assert cancel.status_code == 200
    assert cancel.json() == {"cancelled": True, "outcome": "cancelled"}
    again = api.client.post("/api/runs/abce0000/cancel", headers=api.admin)
    assert again.status_code == 409 and "already finished" in again.json()["detail"]


def test_api_ambiguous_prefix_is_409_naming_the_candidates(api: Api) -> None:
    for path in ("/api/runs/abcd1234", "/api/runs/abcd/logs", "/api/runs/abcd1234/metrics"):
        res = api.client.get(path, headers=api.viewer)
        assert res.status_code == 409, (path, res.text)
        detail = res.json()["detail"]
        assert "ambiguous" in detail and str(TWIN_A) in detail and str(TWIN_B) in detail
    cancel = api.client.post("/api/runs/abcd1234/cancel", headers=api.admin)
    assert cancel.status_code == 409 and "ambiguous" in cancel.json()["detail"]


def test_api_unknown_malformed_and_anonymous(api: Api) -> None:
    assert api.client.get("/api/runs/ffff0000", headers=api.viewer).status_code == 404
    assert api.client.get("/api/runs/ffff0000/logs", headers=api.viewer).status_code == 404
    assert api.client.get("/api/runs/abc", headers=api.viewer).status_code == 422
    assert api.client.get("/api/runs/not-a-uuid", headers=api.viewer).status_code == 422
    assert api.client.get("/api/runs/" + "a" * 200, headers=api.viewer).status_code == 422
    # no probing of ids without credentials; viewers cannot cancel
    assert api.client.get("/api/runs/abcd1234").status_code == 401
    assert api.client.post("/api/runs/eeee0000/cancel", headers=api.viewer).status_code == 403
