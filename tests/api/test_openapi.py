"""The typed HTTP API: every ``/api`` route names its response schema in ``/openapi.json``,
and the response models describe the JSON exactly as the dict builders produce it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from fastflow import accounts
from fastflow.api import schemas
from fastflow.api.routers.settings import _view as settings_view
from fastflow.archive import probe as s3probe
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db import cache as readcache
from fastflow.db.models import ArchivedRun, BackupFailure, CleanupPass, PipelineRun
from fastflow.lifecycle import records
from fastflow.lifecycle.summary import Failure, PassSummary
from fastflow.runs import views as runviews
from fastflow.server import create_app
from tests.seeding import NOW, Seeded, seed_run

SUCCESS_CODES = ("200", "201", "202")
TEXT_ROUTES = {("get", "/api/runs/{run_id}/logs")}


class Api:
    def __init__(self, client: TestClient, ctx: Context) -> None:
        self.client = client
        self.ctx = ctx
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}

    def get(self, path: str) -> Any:
        res = self.client.get(path, headers=self.viewer)
        assert res.status_code == 200, (path, res.status_code, res.text)
        return res.json()


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    yield Api(TestClient(create_app(ctx, schedule=False)), ctx)
    ctx.db.dispose()


def _json(data: Any) -> str:
    """Compared as text, so that key order counts too."""
    return json.dumps(data)


def _roundtrip(model: type[BaseModel], data: Any, *, exclude_unset: bool = False) -> Any:
    """``data`` validated by ``model`` and serialised back, as FastAPI does."""
    return model.model_validate(data).model_dump(mode="json", exclude_unset=exclude_unset)


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


# --- the schema -----------------------------------------------------------------------


def test_every_api_route_names_its_response_schema(api: Api) -> None:
    spec = api.client.get("/openapi.json", headers=api.viewer).json()
    components = spec["components"]["schemas"]
    operations = [
        (method, path, op)
        for path, ops in spec["paths"].items()
        if path.startswith("/api")
        for method, op in ops.items()
    ]
    assert len(operations) >= 19
    for method, path, op in operations:
        success = {c: r for c, r in op["responses"].items() if c in SUCCESS_CODES}
        assert success, (method, path)
        for code, response in success.items():
            content = response.get("content")
            assert content, (method, path, code)
            if (method, path) in TEXT_ROUTES:
                assert content == {"text/plain": {"schema": {"type": "string"}}}
                continue
            ref = content["application/json"]["schema"].get("$ref", "")
            assert ref.startswith("#/components/schemas/"), (method, path, code, ref)
            assert ref.rsplit("/", 1)[1] in components, (method, path, ref)


def test_models_have_the_keys_of_the_dict_builders() -> None:
    run_keys = list(PipelineRun(id=uuid.uuid4(), started_at=NOW).to_dict())
    assert _fields(schemas.RunRowOut) == run_keys
    assert _fields(schemas.RunOut) == [
        *run_keys,
        "duration_s",
        "archived",
        "archive",
        "row_deleted",
    ]
    entry = ArchivedRun(run_id=uuid.uuid4(), started_at=NOW, archived_at=NOW, reason="x")
    assert _fields(schemas.ArchiveEntryOut) == list(entry.to_dict())
    assert _fields(schemas.BackupFailureOut) == list(BackupFailure(created_at=NOW).to_dict())
    summary = list(PassSummary(trigger="api").to_dict())
    summary.remove("plan")
    assert _fields(schemas.PassSummaryOut) == summary
    summary.remove("failures")
    assert _fields(schemas.PassCountsOut) == summary
    assert _fields(schemas.FailureOut) == [f.name for f in dataclasses.fields(Failure)]


# --- real responses -------------------------------------------------------------------


def _seed(ctx: Context) -> tuple[Seeded, Seeded, uuid.UUID]:
    """Two runs (the newer one archived and truncated), a run left only in the ledger,
    backup failures, a stored S3 test and passes of an older and the current format."""
    newer, older = seed_run(ctx, "etl", NOW), seed_run(ctx, "etl", NOW - timedelta(days=1))
    gone = uuid.uuid4()
    with ctx.db.session() as s:
        s.add(_entry(newer.id, reason="truncate_log", log_truncated_at=NOW, encoding="gzip"))
        s.add(_entry(gone, reason="retention", local_deleted_at=NOW, metrics_key="k/m"))
        s.add(BackupFailure(run_id=older.id, pipeline_name="etl", error_message="boom"))
        s.add(BackupFailure(error_message="config", created_at=NOW, resolved_at=NOW))
        old = {"trigger": "schedule", "dry_run": False, "duration_s": 1.5, "archived_runs": 1}
        s.add(CleanupPass(trigger="schedule", finished_at=NOW, summary=json.dumps(old)))
        current = PassSummary(trigger="api", duration_s=0.25).to_dict()
        current.pop("plan")
        s.add(CleanupPass(trigger="api", finished_at=NOW, summary=json.dumps(current)))
        s.add(CleanupPass(trigger="cli", summary=None, error="interrupted"))
    s3probe.remember(ctx.db, s3probe.ProbeResult(False, "nope", NOW.isoformat()))
    readcache.invalidate()
    return newer, older, gone


def _entry(run_id: uuid.UUID, **extra: Any) -> ArchivedRun:
    return ArchivedRun(
        run_id=run_id,
        pipeline_name="etl",
        status="SUCCESS",
        triggered_by="schedule",
        started_at=NOW - timedelta(days=30),
        finished_at=NOW - timedelta(days=30) + timedelta(seconds=3),
        exit_code=0,
        bucket="bucket",
        log_key=f"pipeline-logs/etl/{run_id}/run.log",
        log_size=10,
        log_sha256="ab" * 32,
        archived_at=NOW,
        **extra,
    )


def test_runs_and_archive_keep_their_json(api: Api) -> None:
    newer, older, gone = _seed(api.ctx)
    runs = api.get("/api/runs")
    assert [r["id"] for r in runs] == [str(newer.id), str(older.id)]
    assert runs[0]["archive"]["full_log_archived"] is True and runs[1]["archive"] is None
    assert _json(runs) == _json(runviews.list_views(api.ctx))
    assert _json(_roundtrip(schemas.RunListOut, runs)) == _json(runs)
    for rid in (newer.id, gone):
        one = api.get(f"/api/runs/{rid}")
        assert _json(one) == _json(runviews.get_view(api.ctx, rid))
        assert _json(_roundtrip(schemas.RunOut, one)) == _json(one)
    assert api.get(f"/api/runs/{gone}")["row_deleted"] is True
    archive = api.get("/api/archive")
    assert len(archive) == 2
    assert _json(archive) == _json(runviews.list_archive(api.ctx, None, 100, 0))
    assert _json(_roundtrip(schemas.ArchiveEntryListOut, archive)) == _json(archive)
    metrics = api.get(f"/api/runs/{older.id}/metrics")
    assert metrics == [json.loads(older.metrics_bytes)]
    assert _roundtrip(schemas.MetricSampleListOut, metrics, exclude_unset=True) == metrics


def test_settings_keep_their_json(api: Api) -> None:
    _seed(api.ctx)
    data = api.get("/api/settings")
    assert _json(data) == _json(settings_view(api.ctx))
    assert _fields(schemas.SettingsOut) == list(data)
    assert _json(_roundtrip(schemas.SettingsOut, data)) == _json(data)
    assert data["last_s3_test"] == {"ok": False, "error": "nope", "tested_at": NOW.isoformat()}
    assert set(data["notifications"]) == {"email", "teams"}
    for entry in data["notifications"].values():
        assert list(entry) == _fields(schemas.NotificationStatusOut)


def test_backup_failures_keep_their_json(api: Api) -> None:
    _seed(api.ctx)
    data = api.get("/api/settings/backup-failures")
    last = records.last_backup_at(api.ctx)
    expected = {
        "failures": records.recent_failures(api.ctx, 100),
        "last_backup_at": last.isoformat() if last else None,
    }
    assert _json(data) == _json(expected)
    assert [f["error_message"] for f in data["failures"]] == ["boom", "config"]
    assert _json(_roundtrip(schemas.BackupFailuresOut, data)) == _json(data)


def test_passes_return_the_stored_summary_keys_only(api: Api) -> None:
    _seed(api.ctx)
    data = api.get("/api/settings/cleanup/passes")
    assert _json(data) == _json(records.recent_passes(api.ctx, 20))
    assert [p["trigger"] for p in data] == ["cli", "api", "schedule"]
    assert data[0]["summary"] == {}
    assert list(data[1]["summary"]) == _fields(schemas.PassCountsOut)
    assert list(data[2]["summary"]) == ["trigger", "dry_run", "duration_s", "archived_runs"]
    assert _json(_roundtrip(schemas.CleanupPassListOut, data, exclude_unset=True)) == _json(data)


def test_pipelines_and_auth_keep_their_json(api: Api, ff_env: dict[str, str]) -> None:
    folder = Path(ff_env["PIPELINES_DIR"]) / "etl"
    folder.mkdir()
    (folder / "main.py").write_text("print('ok')\n", encoding="utf-8")
    (folder / "pipeline.json").write_text('{"timeout": 30, "retention": {"runs": 2}}')
    newer, _, _ = _seed(api.ctx)
    pipelines = api.get("/api/pipelines")
    assert pipelines[0]["timeout"] == 30.0 and pipelines[0]["retention"]["runs"] == 2
    assert pipelines[0]["last_run"]["id"] == str(newer.id)
    assert _json(_roundtrip(schemas.PipelineListOut, pipelines)) == _json(pipelines)
    me = api.get("/api/auth/me")
    assert me == {"name": "token:v", "role": "viewer", "kind": "token", "csrf_token": None}
    health = api.client.get("/api/health").json()
    assert list(health) == ["status", "version"]
