"""The HTTP API: authentication on every route, runs, logs, settings, cleanup."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow import accounts
from fastflow.api.deps import require_admin
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun, SettingOverride
from fastflow.errors import ConfigError
from fastflow.server import create_app
from tests.conftest import RUN_FIELDS, MakePipeline, wait_until
from tests.harness.faultproxy import method_is
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, seed_run, seed_series

SECRETS = {
    "S3_SECRET_ACCESS_KEY": "s3-secret-DO-NOT-LEAK-1",
    "SMTP_PASSWORD": "smtp-secret-DO-NOT-LEAK-2",
    "TEAMS_WEBHOOK_URL": "https://example.org/webhook/abc/teams-token-DO-NOT-LEAK-3",
}
LEAK_MARKERS = ("DO-NOT-LEAK",)


class Api:
    def __init__(self, client: TestClient, ctx: Context) -> None:
        self.client = client
        self.ctx = ctx
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'a', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    app = create_app(ctx, schedule=False)
    # no context manager: the app needs no lifespan here (schedule=False), and a long-lived
    # TestClient portal thread can hang at exit; each request gets its own short portal
    yield Api(TestClient(app), ctx)
    ctx.db.dispose()


@pytest.fixture
def s3_api(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_READ_TIMEOUT", "2")
    ctx = bootstrap(load_settings())
    yield Api(TestClient(create_app(ctx, schedule=False)), ctx)
    ctx.db.dispose()


def _flatten(routes: list[Any]) -> Iterator[Any]:
    """Every route, also inside included routers (FastAPI wraps those)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        else:
            yield route


def _routes(api: Api) -> list[tuple[str, str, bool]]:
    out = []
    for route in _flatten(api.client.app.routes):  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute) or not route.path.startswith("/api"):
            continue
        admin = any(d.call is require_admin for d in _walk(route.dependant))
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, route.path, admin))
    return out


def _walk(dep: Any) -> Iterator[Any]:
    for sub in dep.dependencies:
        yield sub
        yield from _walk(sub)


def _fill(path: str) -> str:
    return path.replace("{run_id}", str(uuid.uuid4())).replace("{name}", "nothing")


PUBLIC = {("GET", "/api/health"), ("HEAD", "/api/health"), ("POST", "/api/auth/login")}


def test_every_route_needs_auth_and_admin_routes_refuse_viewers(api: Api) -> None:
    routes = _routes(api)
    assert len(routes) >= 15
    admin_routes = {(m, p) for m, p, admin in routes if admin}
    assert ("POST", "/api/settings/cleanup/force") in admin_routes
    assert ("PUT", "/api/settings") in admin_routes
    assert ("POST", "/api/pipelines/{name}/run") in admin_routes
    for method, path, admin in routes:
        if (method, path) in PUBLIC:
            continue
        res = api.client.request(method, _fill(path))
        assert res.status_code == 401, (method, path, res.status_code)
        assert "detail" in res.json()
        res = api.client.request(method, _fill(path), headers={"Authorization": "Bearer nope"})
        assert res.status_code == 401, (method, path)
        res = api.client.request(method, _fill(path), headers=api.viewer)
        if admin:
            assert res.status_code == 403, (method, path, res.status_code)
        else:
            assert res.status_code != 403, (method, path)
    assert api.client.get("/api/health").status_code == 200
    # (an outside audit: monitors probing with HEAD got 405)
    head = api.client.head("/api/health")
    assert head.status_code == 200 and head.content == b""


def test_revoked_token_is_refused(api: Api) -> None:
    token = accounts.create_token(api.ctx.db, "temp", "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/runs", headers=headers).status_code == 200
    assert accounts.revoke_token(api.ctx.db, "temp") == 1
    assert api.client.get("/api/runs", headers=headers).status_code == 401


def test_runs_logs_metrics(api: Api) -> None:
    runs = seed_series(api.ctx, "etl", 3)
    res = api.client.get("/api/runs", headers=api.viewer)
    assert [r["id"] for r in res.json()] == [str(r.id) for r in reversed(runs)]
    first = res.json()[0]
    assert {*RUN_FIELDS, "archived", "archive"} <= set(first)
    assert api.client.get("/api/runs?limit=1&offset=1", headers=api.viewer).json()[0]["id"] == (
        str(runs[1].id)
    )
    assert api.client.get("/api/runs?status=FAILED", headers=api.viewer).json() == []
    assert api.client.get("/api/runs?status=BOGUS", headers=api.viewer).status_code == 422
    # the route as DESIGN.md writes it: empty values mean the defaults (it was a 422)
    blank = api.client.get(
        "/api/runs?pipeline_name=&limit=&offset=&status=&include_archived=", headers=api.viewer
    )
    assert blank.status_code == 200, blank.text
    assert [r["id"] for r in blank.json()] == [str(r.id) for r in reversed(runs)]
    one = api.client.get(f"/api/runs/{runs[0].id}", headers=api.viewer)
    assert one.status_code == 200 and one.json()["pipeline_name"] == "etl"
    assert api.client.get(f"/api/runs/{uuid.uuid4()}", headers=api.viewer).status_code == 404
    assert api.client.get("/api/runs/not-a-uuid", headers=api.viewer).status_code == 422
    log = api.client.get(f"/api/runs/{runs[0].id}/logs", headers=api.viewer)
    assert log.status_code == 200 and log.content == runs[0].log_bytes
    assert log.headers["content-type"].startswith("text/plain")
    tail = api.client.get(f"/api/runs/{runs[0].id}/logs?tail_bytes=10", headers=api.viewer)
    assert tail.content == runs[0].log_bytes[-10:]
    metrics = api.client.get(f"/api/runs/{runs[0].id}/metrics", headers=api.viewer).json()
    assert metrics == [json.loads(runs[0].metrics_bytes)]


def test_log_path_outside_logs_dir_is_refused(api: Api) -> None:
    run = seed_run(api.ctx, "etl", NOW)
    with api.ctx.db.session() as s:
        row = s.get(PipelineRun, run.id)
        assert row is not None
        row.log_file = "../../../../etc/passwd"
    res = api.client.get(f"/api/runs/{run.id}/logs", headers=api.viewer)
    assert res.status_code == 400 and "outside LOGS_DIR" in res.json()["detail"]
    assert "root:" not in res.text


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", ".hidden", "a%5Cb"])
def test_bad_pipeline_names_are_refused(api: Api, name: str) -> None:
    res = api.client.post(f"/api/pipelines/{name}/run", headers=api.admin)
    assert res.status_code in (404, 422), res.text
    with api.ctx.db.session() as s:
        assert s.scalars(select(PipelineRun)).all() == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"A=B": "x"}, "is not a variable name"),
        ({"": "x"}, "is not a variable name"),
        ({"9LIVES": "x"}, "is not a variable name"),
        ({"NUL\u0000": "x"}, "is not a variable name"),
        ({"FASTFLOW_RUN_ID": "x"}, "set by fastflow"),
        ({"fastflow_payload": "/etc/shadow"}, "set by fastflow"),
        ({"DB_PASSWORD": "s3cret\u0000tail"}, "NUL character"),
        ({"BIG": "x" * 70_000}, "longer than"),
    ],
)
def test_run_parameters_a_process_cannot_take_are_refused(
    api: Api, make_pipeline: MakePipeline, env: dict[str, str], needle: str
) -> None:
    """Found by an outside audit: such parameters were queued (202) and every attempt,
    retries included, then failed at start ("illegal environment variable name")."""
    make_pipeline("hello", "print('hi')\n")
    res = api.client.post("/api/pipelines/hello/run", headers=api.admin, json={"env": env})
    assert res.status_code == 422 and needle in res.json()["detail"], res.text
    assert "s3cret" not in res.text and "/etc/shadow" not in res.text
    with api.ctx.db.session() as s:
        assert s.scalars(select(PipelineRun)).all() == []


def test_a_lone_surrogate_in_a_run_parameter_is_refused(
    api: Api, make_pipeline: MakePipeline
) -> None:
    """An outside audit: ``"\\ud800"`` (valid JSON, no valid text) was queued (202), then
    every attempt failed at start with a traceback in the server log."""
    make_pipeline("hello", "print('hi')\n")
    res = api.client.post(
        "/api/pipelines/hello/run",
        headers={**api.admin, "Content-Type": "application/json"},
        content=b'{"env": {"DB_PASSWORD": "s3cret\\ud800"}}',
    )
    assert res.status_code == 422 and "not valid Unicode" in res.json()["detail"], res.text
    assert "s3cret" not in res.text
    with api.ctx.db.session() as s:
        assert s.scalars(select(PipelineRun)).all() == []


def test_an_unknown_key_in_the_run_body_is_refused(api: Api, make_pipeline: MakePipeline) -> None:
    """Found by an outside audit: ``{"enc": {...}}`` (a typo) queued a run without its
    parameters (202). It is a 422 naming the key now, and nothing is queued."""
    make_pipeline("hello", "print('hi')\n")
    res = api.client.post(
        "/api/pipelines/hello/run", headers=api.admin, json={"enc": {"MODE": "full"}}
    )
    assert res.status_code == 422, res.text
    (problem,) = res.json()["detail"]
    assert problem["loc"] == ["body", "enc"] and "full" not in res.text
    with api.ctx.db.session() as s:
        assert s.scalars(select(PipelineRun)).all() == []
    ok = api.client.post("/api/pipelines/hello/run", headers=api.admin, json={"env": {"A": "1"}})
    assert ok.status_code == 202, ok.text


def test_a_malformed_request_body_is_not_echoed(api: Api, make_pipeline: MakePipeline) -> None:
    """Found by an outside audit: FastAPI's 422 repeated what was sent (``input``),
    passwords in the wrong shape included."""
    make_pipeline("hello", "print('hi')\n")
    cases = [
        ("POST", "/api/auth/login", {"username": "admin", "password": ["LOGINSECRETPW"]}, {}),
        ("PUT", "/api/settings", ["SMTPSECRETPW"], api.admin),
        (
            "POST",
            "/api/pipelines/hello/run",
            {"env": {"DB_PASSWORD": {"v": "RUNSECRET1"}}},
            api.admin,
        ),
    ]
    for method, path, body, headers in cases:
        res = api.client.request(method, path, json=body, headers=headers)
        assert res.status_code == 422, (path, res.text)
        assert "SECRET" not in res.text, res.text
        detail = res.json()["detail"]
        assert detail and all({"type", "loc", "msg"} <= set(e) and "input" not in e for e in detail)
    too_long = api.client.get("/api/runs?limit=100000000", headers=api.viewer)
    assert too_long.status_code == 422 and "100000000" not in too_long.text


def test_start_run_in_background(api: Api, make_pipeline: MakePipeline) -> None:
    make_pipeline("hello", "print('hi from api')\n")
    res = api.client.post("/api/pipelines/hello/run", headers=api.admin)
    assert res.status_code == 202
    run_id = res.json()["run_id"]

    def finished() -> bool:
        status = api.client.get(f"/api/runs/{run_id}", headers=api.viewer).json()["status"]
        return status not in ("QUEUED", "PENDING", "RUNNING")

    wait_until(finished, 60, "the API run to finish")
    run = api.client.get(f"/api/runs/{run_id}", headers=api.viewer).json()
    assert run["status"] == "SUCCESS" and run["triggered_by"] == "api"
    assert "hi from api" in api.client.get(f"/api/runs/{run_id}/logs", headers=api.viewer).text
    listed = api.client.get("/api/pipelines", headers=api.viewer).json()
    assert listed[0]["name"] == "hello" and listed[0]["last_run"]["id"] == run_id
    assert api.client.post("/api/pipelines/ghost/run", headers=api.admin).status_code == 404


def test_error_text_never_shows_the_servers_folders(
    api: Api, make_pipeline: MakePipeline, ff_env: dict[str, str]
) -> None:
    """A 404 or 422 names PIPELINES_DIR, not where the server keeps it (outside audit)."""
    make_pipeline("broken", config='{"retention": 5}')
    where = ff_env["PIPELINES_DIR"]
    missing = api.client.post("/api/pipelines/ghost/run", headers=api.admin)
    assert missing.status_code == 404
    assert where not in missing.text and "PIPELINES_DIR/ghost/main.py" in missing.json()["detail"]
    broken = api.client.post("/api/pipelines/broken/run", headers=api.admin)
    assert broken.status_code == 422, broken.text
    assert where not in broken.text
    assert "PIPELINES_DIR/broken/pipeline.json" in broken.json()["detail"]


def test_a_runs_failure_reason_names_the_folder_by_its_setting(
    api: Api, make_pipeline: MakePipeline, ff_env: dict[str, str]
) -> None:
    """A failure reason is error text too: a run whose environment could not be read says
    which file as PIPELINES_DIR/..., in the run object, the run list and the live stream's
    last event, while the row (and the CLI on the server) keep the path as it was."""
    folder = make_pipeline("includes")
    (folder / "requirements.txt").write_text("-r missing.txt\n")
    res = api.client.post("/api/pipelines/includes/run", headers=api.admin)
    assert res.status_code == 202, res.text
    run_id = res.json()["run_id"]

    def finished() -> bool:
        status = api.client.get(f"/api/runs/{run_id}", headers=api.viewer).json()["status"]
        return status not in ("QUEUED", "PENDING", "RUNNING")

    wait_until(finished, 60, "the API run to fail")
    where = ff_env["PIPELINES_DIR"]
    with api.ctx.db.session() as s:
        row = s.get(PipelineRun, uuid.UUID(run_id))
        assert row is not None and row.status == "FAILED"
        assert f"{where}/includes/missing.txt" in str(row.failure_reason)  # as recorded
    one = api.client.get(f"/api/runs/{run_id}", headers=api.viewer)
    listed = api.client.get("/api/runs?pipeline=includes", headers=api.viewer)
    stream = api.client.get(f"/api/runs/{run_id}/logs/stream", headers=api.viewer)
    # (the log itself is the run's output: it names files as a traceback would)
    last = stream.text.rstrip().rsplit("\n\n", 1)[-1]
    assert last.startswith("event: status\n"), stream.text[-500:]
    for text in (one.text, listed.text, last):
        assert where not in text
    reason = one.json()["failure_reason"]
    assert "cannot read PIPELINES_DIR/includes/missing.txt" in reason, reason
    assert listed.json()[0]["failure_reason"] == reason
    assert json.loads(last.split("data: ", 1)[1])["failure_reason"] == reason


def test_session_login_csrf_and_logout(api: Api) -> None:
    accounts.create_user(api.ctx.db, "ada", "correct horse", "admin")
    assert (
        api.client.post(
            "/api/auth/login", json={"username": "ada", "password": "wrong"}
        ).status_code
        == 401
    )
    res = api.client.post("/api/auth/login", json={"username": "ada", "password": "correct horse"})
    assert res.status_code == 200
    cookie = res.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    csrf = res.json()["csrf_token"]
    assert api.client.get("/api/runs").status_code == 200  # the cookie authenticates
    body = {"log_retention_runs": 5}
    assert api.client.put("/api/settings", json=body).status_code == 403  # no CSRF token
    assert (
        api.client.put("/api/settings", json=body, headers={"X-CSRF-Token": "forged"}).status_code
        == 403
    )
    ok = api.client.put("/api/settings", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and ok.json()["log_retention_runs"] == 5
    assert api.client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert api.client.get("/api/runs").status_code == 401


def test_settings_validation_overrides_and_encrypted_secrets(api: Api) -> None:
    bad = api.client.put("/api/settings", json={"log_retention_runs": -1}, headers=api.admin)
    assert bad.status_code == 422 and "LOG_RETENTION_RUNS" in bad.json()["detail"]
    bad = api.client.put("/api/settings", json={"cleanup_schedule": "nope"}, headers=api.admin)
    assert bad.status_code == 422 and "CLEANUP_SCHEDULE" in bad.json()["detail"]
    bad = api.client.put("/api/settings", json={"database_url": "sqlite://"}, headers=api.admin)
    assert bad.status_code == 422
    good = api.client.put(
        "/api/settings",
        json={
            "s3_backup_enabled": True,
            "s3_bucket": "logs",
            "s3_secret_access_key": "zz-top-secret",
            "email_recipients": "a@example.org, b@example.org",
            "log_max_size_mb": 20,
        },
        headers=api.admin,
    )
    assert good.status_code == 200, good.text
    view = api.client.get("/api/settings", headers=api.viewer).json()
    assert view["s3_bucket"] == "logs" and view["s3_secret_access_key_configured"] is True
    assert view["email_recipients"] == ["a@example.org", "b@example.org"]
    assert view["log_max_size_mb"] == 20 and "s3_bucket" in view["overridden"]
    assert "S3_ENDPOINT_URL" in view["s3_missing"]
    assert "zz-top-secret" not in json.dumps(view)
    with api.ctx.db.session() as s:
        stored = s.get(SettingOverride, "s3_secret_access_key")
        assert (
            stored is not None and stored.encrypted and "zz-top-secret" not in (stored.value or "")
        )
    # the running process uses the new values, and a restart keeps them
    assert api.ctx.settings.log_max_size_mb == 20
    again = bootstrap(load_settings())
    assert again.settings.s3_secret_access_key is not None
    assert again.settings.s3_secret_access_key.get_secret_value() == "zz-top-secret"
    # an empty secret keeps the stored one; null removes an override
    api.client.put(
        "/api/settings", json={"s3_secret_access_key": "", "s3_bucket": None}, headers=api.admin
    )
    view = api.client.get("/api/settings", headers=api.viewer).json()
    assert view["s3_secret_access_key_configured"] is True and view["s3_bucket"] is None


def test_no_secret_in_any_response(ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_BACKUP_ENABLED", "true")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    ctx = bootstrap(load_settings())
    seed_series(ctx, "etl", 2)
    client = TestClient(create_app(ctx, schedule=False))
    api = Api(client, ctx)
    bodies = []
    for method, path, _ in _routes(api):
        if method == "GET":
            bodies.append(client.get(_fill(path), headers=api.admin).text)
    bodies.append(client.post("/api/settings/s3/test", headers=api.admin).text)
    bodies.append(client.post("/api/settings/cleanup/force", headers=api.admin).text)
    bodies.append(client.get("/api/settings/backup-failures", headers=api.admin).text)
    for page in ("/settings", "/runs", "/archive", "/pipelines"):
        bodies.append(client.get(page, headers=api.admin).text)
    for body in bodies:
        for secret in SECRETS.values():
            assert secret not in body
        assert not any(marker in body for marker in LEAK_MARKERS)


# --- with the S3 server ------------------------------------------------------------------


def test_archived_log_is_readable_after_the_row_was_deleted(s3_api: Api, s3: S3Env) -> None:
    api = s3_api
    api.client.put("/api/settings", json={"log_retention_runs": 1}, headers=api.admin)
    old, new = seed_series(api.ctx, "etl", 2)
    summary = api.client.post("/api/settings/cleanup/force", headers=api.admin).json()
    assert summary["archived_runs"] == 1 and summary["deleted_runs"] == 1
    for key in (
        "deleted_runs",
        "deleted_logs",
        "deleted_metrics",
        "truncated_logs",
        "archived_runs",
        "backup_failures",
    ):
        assert key in summary
    run = api.client.get(f"/api/runs/{old.id}", headers=api.viewer).json()
    assert run["row_deleted"] is True and run["archived"] is True
    assert run["archive"]["log_key"] == f"pipeline-logs/etl/{old.id}/run.log"
    assert run["archive"]["log_sha256"] == old.sha
    log = api.client.get(f"/api/runs/{old.id}/logs", headers=api.viewer)
    assert log.status_code == 200 and log.content == old.log_bytes
    assert log.headers["x-log-source"] == "archive"
    tail = api.client.get(f"/api/runs/{old.id}/logs?tail_bytes=7", headers=api.viewer)
    assert tail.content == old.log_bytes[-7:]
    metrics = api.client.get(f"/api/runs/{old.id}/metrics", headers=api.viewer).json()
    assert metrics == [json.loads(old.metrics_bytes)]
    ledger = api.client.get("/api/archive?pipeline_name=etl", headers=api.viewer).json()
    assert [e["run_id"] for e in ledger] == [str(old.id)]
    assert api.client.get("/api/archive?pipeline_name=other", headers=api.viewer).json() == []
    assert new.log.exists()


def test_a_forced_pass_shows_its_failure_at_once_to_a_client_that_just_polled(
    s3_api: Api, s3: S3Env
) -> None:
    """The pass runs in a child process; the server's one-second read cache must not
    hide what it recorded from the poll that follows it."""
    api = s3_api
    api.client.put("/api/settings", json={"log_retention_runs": 1}, headers=api.admin)
    seed_series(api.ctx, "etl", 2)
    before = api.client.get("/api/settings/backup-failures", headers=api.viewer).json()
    assert before["failures"] == []  # now cached
    s3.proxy.stop()
    summary = api.client.post("/api/settings/cleanup/force", headers=api.admin).json()
    assert summary["backup_failures"] == 1
    after = api.client.get("/api/settings/backup-failures", headers=api.viewer).json()
    assert [f["pipeline_name"] for f in after["failures"]] == ["etl"]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("ok", None),
        ("stopped", "connection refused at http://127.0.0.1:"),
        ("bucket", "bucket 'missing-bucket' does not exist"),
        ("credentials", "access denied (InvalidAccessKeyId)"),
    ],
)
def test_s3_connection_test(s3_api: Api, s3: S3Env, fault: str, expected: str | None) -> None:
    api = s3_api
    if fault == "stopped":
        s3.proxy.stop()
    elif fault == "bucket":
        api.client.put("/api/settings", json={"s3_bucket": "missing-bucket"}, headers=api.admin)
    elif fault == "credentials":
        s3.proxy.fail(403, code="InvalidAccessKeyId")
    res = api.client.post("/api/settings/s3/test", headers=api.admin).json()
    assert res["ok"] is (expected is None)
    if expected:
        assert expected in res["error"]
        assert s3.secret_key not in res["error"]
    else:
        assert res["error"] is None
        # the probe was written, read back and deleted
        methods = [r.method for r in s3.proxy.requests]
        assert {"PUT", "GET", "DELETE"} <= set(methods)
        assert s3.client().list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0) == 0
    assert res["tested_at"]
    shown = api.client.get("/api/settings", headers=api.viewer).json()["last_s3_test"]
    assert shown["ok"] is res["ok"] and shown["tested_at"] == res["tested_at"]


def _pass_running(ctx: Context) -> bool:
    from fastflow.db.models import CleanupPass

    with ctx.db.session() as s:
        return s.query(CleanupPass).filter(CleanupPass.finished_at.is_(None)).count() > 0


def test_force_cleanup_answers_409_while_a_pass_runs(s3_api: Api, s3: S3Env) -> None:
    api = s3_api
    api.client.put("/api/settings", json={"log_retention_runs": 1}, headers=api.admin)
    seed_series(api.ctx, "etl", 4)
    s3.proxy.delay(120, match=method_is("PUT"))  # held until clear(): the first pass is busy
    first: list[Any] = []
    thread = threading.Thread(
        target=lambda: first.append(
            api.client.post("/api/settings/cleanup/force", headers=api.admin)
        )
    )
    thread.start()
    wait_until(lambda: _pass_running(api.ctx), 60, "the first pass")
    second = api.client.post("/api/settings/cleanup/force", headers=api.admin)
    assert second.status_code == 409
    assert second.json()["started_at"]
    assert "another cleanup pass is running" in second.json()["detail"]
    s3.proxy.clear()
    thread.join(60)
    assert first[0].status_code == 200 and first[0].json()["archived_runs"] == 3
    passes = api.client.get("/api/settings/cleanup/passes", headers=api.viewer).json()
    assert passes[0]["archived_runs"] == 3 and passes[0]["trigger"] == "api"


def test_backup_failures_are_persisted_unresolved_first(s3_api: Api, s3: S3Env) -> None:
    api = s3_api
    api.client.put("/api/settings", json={"log_retention_runs": 1}, headers=api.admin)
    runs = seed_series(api.ctx, "etl", 3)
    s3.proxy.fail(500)
    api.client.post("/api/settings/cleanup/force", headers=api.admin)
    data = api.client.get("/api/settings/backup-failures", headers=api.viewer).json()
    assert set(data) >= {"failures", "last_backup_at"} and data["last_backup_at"] is None
    assert len(data["failures"]) == 2
    for f in data["failures"]:
        assert {"run_id", "pipeline_name", "error_message", "created_at"} <= set(f)
        assert "S3 server error 500" in f["error_message"]
    assert {f["run_id"] for f in data["failures"]} == {str(runs[0].id), str(runs[1].id)}
    # a restart keeps them (they live in the database)
    ctx2 = bootstrap(load_settings())
    client2 = TestClient(create_app(ctx2, schedule=False))
    again = client2.get("/api/settings/backup-failures", headers=api.viewer).json()
    assert [f["id"] for f in again["failures"]] == [f["id"] for f in data["failures"]]
    s3.proxy.clear()
    api.client.post("/api/settings/cleanup/force", headers=api.admin)
    later = api.client.get("/api/settings/backup-failures", headers=api.viewer).json()
    assert later["last_backup_at"] is not None
    assert all(f["resolved_at"] for f in later["failures"])
    _ = timedelta


def test_prometheus_metrics_need_a_token_and_report_the_backlog(
    s3_api: Api, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = s3_api
    assert api.client.get("/metrics").status_code == 401
    api.client.put("/api/settings", json={"log_retention_runs": 1}, headers=api.admin)
    seed_series(api.ctx, "etl", 3)
    s3.proxy.fail(500)
    api.client.post("/api/settings/cleanup/force", headers=api.admin)
    text = api.client.get("/metrics", headers=api.viewer).text
    assert 'fastflow_runs{status="SUCCESS"} 3.0' in text
    assert "fastflow_backup_failures_unresolved 2.0" in text
    assert "fastflow_cleanup_passes_total 1.0" in text
    backlog = re.search(r"^fastflow_retention_backlog_oldest_seconds (\S+)$", text, re.M)
    assert backlog and float(backlog.group(1)) > 2 * 86400  # the oldest run is 3 days old
    s3.proxy.clear()
    api.client.post("/api/settings/cleanup/force", headers=api.admin)
    text = api.client.get("/metrics", headers=api.viewer).text
    assert "fastflow_archived_runs_total 2.0" in text
    assert "fastflow_retention_backlog_oldest_seconds 0.0" in text
    assert "fastflow_backup_failures_unresolved 0.0" in text
    api.ctx.settings = api.ctx.settings.model_copy(update={"metrics_public": True})
    assert api.client.get("/metrics").status_code == 200


# --- bounds (issue 13): absurd values are 4xx or exit 2, never a 500 ------------------
@pytest.mark.parametrize(
    "change",
    [
        {"log_retention_days": 1_000_000},
        {"log_retention_days": 99_999_999_999},
        {"log_max_size_mb": 99_999_999_999_999_999},
        {"log_retention_runs": 1e23},
    ],
)
def test_put_settings_refuses_values_beyond_their_bound(
    api: Api, change: dict[str, object]
) -> None:
    res = api.client.put("/api/settings", json=change, headers=api.admin)
    assert res.status_code == 422, res.text
    (name,) = change
    assert name.upper() in res.json()["detail"]
    dry = api.client.get("/api/settings", headers=api.viewer)
    assert dry.status_code == 200  # nothing was stored


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_RETENTION_DAYS", "1000000"),
        ("LOG_MAX_SIZE_MB", "99999999999999999"),
        ("LOG_RETENTION_RUNS", "1e23"),
    ],
)
def test_environment_values_beyond_their_bound_are_config_errors(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert name in str(err.value)


def test_database_url_password_is_masked_in_the_error(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2-secret@db/ff")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2-secret" not in str(err.value) and "app:***@db" in str(err.value)


@pytest.mark.parametrize("path", ["/api/runs", "/api/archive"])
def test_huge_offsets_are_422_not_500(api: Api, path: str) -> None:
    res = api.client.get(path, params={"offset": 9223372036854775808}, headers=api.viewer)
    assert res.status_code == 422


def test_huge_page_number_is_422_not_500(api: Api) -> None:
    res = api.client.get("/runs", params={"page": "99999999999999999999"}, follow_redirects=False)
    assert res.status_code == 422


def test_logout_without_its_csrf_token_still_ends_the_session(api: Api) -> None:
    accounts.create_user(api.ctx.db, "bo", "correct horse", "viewer")
    res = api.client.post("/api/auth/login", json={"username": "bo", "password": "correct horse"})
    assert res.status_code == 200
    assert api.client.get("/api/runs").status_code == 200
    out = api.client.post("/logout", data={"csrf_token": "wrong"}, follow_redirects=False)
    assert out.status_code == 303
    api.client.cookies.set("fastflow_session", res.cookies["fastflow_session"])  # replayed
    assert api.client.get("/api/runs").status_code == 401  # the server session is gone


def test_api_docs_need_authentication_unless_public(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert api.client.get(path).status_code == 401, path
        assert api.client.get(path, headers=api.viewer).status_code == 200, path
    public = bootstrap(load_settings(docs_public=True))
    client = TestClient(create_app(public, schedule=False))
    assert client.get("/openapi.json").status_code == 200


def test_security_headers(api: Api) -> None:
    page = api.client.get("/login")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert api.client.get("/api/health").headers["x-content-type-options"] == "nosniff"
    # JSON gets the common headers but no page policy; the API docs are a page like any
    # other: the same policy, no inline script, nothing from another site (no CDN)
    health = api.client.get("/api/health")
    assert health.headers["referrer-policy"] == "same-origin"
    assert "content-security-policy" not in health.headers
    docs = api.client.get("/docs", headers=api.viewer)
    assert docs.headers["x-frame-options"] == "DENY"
    assert docs.headers["content-security-policy"] == page.headers["content-security-policy"]
    scripts = re.findall(r"<script[^>]*>", docs.text)
    assert scripts == ['<script src="/static/apidocs.js" defer>']
    assert "http" not in docs.text.replace("http-equiv", "")
    assert api.client.get("/static/apidocs.js").status_code == 200
    redoc = api.client.get("/redoc", headers=api.viewer, follow_redirects=False)
    assert (redoc.status_code, redoc.headers["location"]) == (307, "/docs")
    # errors outside any route get them too, each header once
    missing = api.client.get("/no-such-page")
    assert missing.headers.get_list("x-frame-options") == ["DENY"]


def test_an_unhandled_error_answers_500_with_the_security_headers_and_no_detail(
    ff_env: dict[str, str],
) -> None:
    """Starlette answers an unhandled exception from outside every user middleware: the
    security headers wrap that too, and the answer names no internals."""
    app = create_app(bootstrap(load_settings()), schedule=False)

    @app.get("/api/health/boom-for-test")
    def boom() -> None:
        raise RuntimeError("secret internals: s3_secret_access_key=hunter2")

    client = TestClient(app, raise_server_exceptions=False)
    res = client.get("/api/health/boom-for-test")
    assert res.status_code == 500
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["x-frame-options"] == "DENY"
    assert res.headers["referrer-policy"] == "same-origin"
    assert "hunter2" not in res.text and "internals" not in res.text


def test_the_log_stream_of_an_unknown_run_is_a_404(api: Api) -> None:
    """As every other ``/api/runs/{id}`` route, full id or short (before, an outside
    audit found, a full id got a 200 event stream with ``log-error`` and ``retry``,
    which an ``EventSource`` reconnects to every second)."""
    unknown = uuid.uuid4()
    for rid in (str(unknown), str(unknown)[:8]):
        res = api.client.get(f"/api/runs/{rid}/logs/stream", headers=api.viewer)
        assert res.status_code == 404, res.text
        assert res.json()["detail"] == f"run {rid} not found"
        assert not res.headers["content-type"].startswith("text/event-stream")
