"""``fastflow archive check-bucket`` and ``GET /api/archive/bucket-check`` against the real
S3 test server (and the fault proxy for APIs a server does not implement)."""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any

from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.server import create_app
from tests.harness.fixtures import S3Env

Cli = Callable[..., CompletedProcess[str]]
WORM_BUCKET = "fastflow-audit"


def _checks(res: CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    report = json.loads(res.stdout)
    assert [c["name"] for c in report["checks"]] == [
        "versioning",
        "object lock",
        "default retention",
        "encryption",
        "lifecycle",
    ]
    return {c["name"]: c for c in report["checks"]}


def test_a_plain_bucket_gets_warnings_not_errors(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    res = cli("archive", "check-bucket", "--json", env=s3.env())
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["bucket"] == s3.bucket and report["prefix"] == "pipeline-logs"
    checks = _checks(res)
    assert {name: c["status"] for name, c in checks.items()} == {
        "versioning": "warning",
        "object lock": "warning",
        "default retention": "warning",
        "encryption": "warning",
        "lifecycle": "ok",
    }
    assert "lost for good" in checks["versioning"]["message"]
    text = cli("archive", "check-bucket", env=s3.env())
    assert text.returncode == 0 and "WARNING  versioning" in text.stdout


def test_an_audit_bucket_passes_and_an_early_expiry_is_an_error(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    client = s3.client()
    client.create_bucket(Bucket=WORM_BUCKET, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=WORM_BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}},
        },
    )
    client.put_bucket_encryption(
        Bucket=WORM_BUCKET,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    env = {
        **s3.env(),
        "S3_BUCKET": WORM_BUCKET,
        "S3_OBJECT_LOCK_MODE": "GOVERNANCE",
        "S3_OBJECT_LOCK_DAYS": "90",
    }
    res = cli("archive", "check-bucket", "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    checks = _checks(res)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "GOVERNANCE for 30 days" in checks["default retention"]["message"]
    assert "AES256" in checks["encryption"]["message"]

    rules: list[Any] = [
        {
            "ID": "expire-logs",
            "Status": "Enabled",
            "Filter": {"Prefix": "pipeline-logs/"},
            "Expiration": {"Days": 30},
        },
        {
            "ID": "cold",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Transitions": [{"Days": 60, "StorageClass": "DEEP_ARCHIVE"}],
        },
        {
            "ID": "elsewhere",
            "Status": "Enabled",
            "Filter": {"Prefix": "other/"},
            "Expiration": {"Days": 1},
        },
    ]
    client.put_bucket_lifecycle_configuration(
        Bucket=WORM_BUCKET, LifecycleConfiguration={"Rules": rules}
    )
    res = cli("archive", "check-bucket", "--json", env=env)
    assert res.returncode == 1
    lifecycle = _checks(res)["lifecycle"]
    assert lifecycle["status"] == "error"
    assert "expire-logs deletes objects after 30 days" in lifecycle["message"]
    assert "S3_OBJECT_LOCK_DAYS (90)" in lifecycle["message"]
    assert "DEEP_ARCHIVE" in lifecycle["message"] and "elsewhere" not in lifecycle["message"]


def test_object_lock_settings_on_a_bucket_without_it_are_errors(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    env = {**s3.env(), "S3_OBJECT_LOCK_MODE": "COMPLIANCE", "S3_OBJECT_LOCK_DAYS": "10"}
    res = cli("archive", "check-bucket", "--json", env=env)
    assert res.returncode == 1
    checks = _checks(res)
    assert checks["object lock"]["status"] == "error"
    assert "S3_OBJECT_LOCK_MODE" in checks["object lock"]["message"]
    assert checks["versioning"]["status"] == "error"


def test_apis_a_server_lacks_are_unknown_not_errors(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    def lacking(method: str, path: str) -> bool:
        return method == "GET" and ("?encryption" in path or "?object-lock" in path)

    s3.proxy.fail(501, match=lacking, code="NotImplemented")
    try:
        res = cli("archive", "check-bucket", "--json", env=s3.env())
    finally:
        s3.proxy.clear()
    assert res.returncode == 0, res.stdout + res.stderr
    checks = _checks(res)
    for name in ("object lock", "default retention", "encryption"):
        assert checks[name]["status"] == "unknown", name
    assert checks["encryption"]["message"] == "unknown (not supported by this server)"
    assert checks["versioning"]["status"] == "warning"

    s3.proxy.stop()  # no server at all: one line, exit 1
    try:
        down = cli("archive", "check-bucket", env={**s3.env(), "S3_CONNECT_TIMEOUT": "1"})
    finally:
        s3.proxy.start()
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "connection refused" in down.stderr


def test_the_api_route_for_the_settings_panel(
    s3: S3Env, ff_env: dict[str, str], monkeypatch: Any
) -> None:
    ctx = bootstrap(load_settings())  # S3 not configured
    try:
        client = TestClient(create_app(ctx, schedule=False))
        viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}
        assert client.get("/api/archive/bucket-check").status_code == 401
        res = client.get("/api/archive/bucket-check", headers=viewer)
        assert res.status_code == 422 and "S3_BUCKET" in res.json()["detail"]
    finally:
        ctx.db.dispose()
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    try:
        client = TestClient(create_app(ctx, schedule=False))
        viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'w', 'viewer')}"}
        data = client.get("/api/archive/bucket-check", headers=viewer).json()
        assert data["ok"] is True and len(data["checks"]) == 5
        assert s3.secret_key not in json.dumps(data)
    finally:
        ctx.db.dispose()
