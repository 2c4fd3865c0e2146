"""``POST``/``DELETE /api/runs/{id}/pin`` (issue 16): who, when and why are recorded and
shown in run JSON; with ``S3_OBJECT_LOCK_LEGAL_HOLD=true`` the run's archived objects get
an Object Lock legal hold (real moto bucket created with Object Lock) that blocks deleting
them, and unpinning lifts it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle import batch as batches
from fastflow.lifecycle import selection
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.executor import PassRun, pipeline_policy
from fastflow.lifecycle.summary import PassSummary
from fastflow.runs import pins
from fastflow.server import create_app
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, Seeded, ledger, run_row, seed_run

LOCKED = "fastflow-locked"


class Api:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = TestClient(create_app(ctx, schedule=False))
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'ops', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}

    def pin(self, run_id: object, reason: str = "audit 2026", **kw: Any) -> Any:
        return self.client.post(
            f"/api/runs/{run_id}/pin", json={"reason": reason}, headers=self.admin, **kw
        )

    def unpin(self, run_id: object) -> Any:
        return self.client.delete(f"/api/runs/{run_id}/pin", headers=self.admin)


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    ctx.db.dispose()


@pytest.fixture
def locked_api(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """S3 backup into a bucket created with Object Lock, legal holds on."""
    s3.client().create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_BUCKET", LOCKED)
    monkeypatch.setenv("S3_OBJECT_LOCK_LEGAL_HOLD", "true")
    monkeypatch.setenv("S3_READ_TIMEOUT", "5")
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    ctx.db.dispose()


def _archived_only(ctx: Context) -> tuple[Seeded, list[str]]:
    """A run that retention archived and whose row it deleted: (the run, its two keys)."""
    old = seed_run(ctx, "etl", NOW - timedelta(days=3))
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    data = ctx.settings.model_dump()
    data.update(log_retention_runs=1)
    assert run_pass(
        Context(settings=load_settings(**data), db=ctx.db), "test", now=NOW
    ).deleted_runs
    assert run_row(ctx, old.id) is None and old.id in ledger(ctx)
    entry = ledger(ctx)[old.id]
    keys = [k for k in (entry.log_key, entry.metrics_key) if k is not None]
    assert len(keys) == 2
    return old, keys


def test_admin_pins_and_unpins_a_run_and_run_json_shows_it(api: Api) -> None:
    run = seed_run(api.ctx, "etl", NOW - timedelta(days=3))

    res = api.pin(str(run.id)[:8], "  kept for the\ntax audit  ")

    assert res.status_code == 200, res.text
    body = res.json()
    assert body["pinned"] is True and body["changed"] is True
    assert (body["pinned_by"], body["pin_reason"]) == ("token:ops", "kept for the tax audit")
    assert body["legal_hold"] == {"enabled": False, "on": True, "objects": [], "error": None}
    shown = api.client.get(f"/api/runs/{run.id}", headers=api.viewer).json()
    assert shown["pinned_at"] == body["pinned_at"] and shown["pinned_by"] == "token:ops"
    assert shown["pin_reason"] == "kept for the tax audit"
    listed = api.client.get("/api/runs", headers=api.viewer).json()
    assert listed[0]["pin_reason"] == "kept for the tax audit"

    again = api.pin(run.id, "second reason").json()
    assert again["changed"] is False and again["pin_reason"] == "second reason"

    off = api.unpin(run.id)
    assert off.status_code == 200 and off.json()["changed"] is True
    shown = api.client.get(f"/api/runs/{run.id}", headers=api.viewer).json()
    assert (shown["pinned_at"], shown["pinned_by"], shown["pin_reason"]) == (None, None, None)
    assert api.unpin(run.id).json()["changed"] is False  # nothing to do: still 200


def test_pins_need_an_admin_and_a_reason(api: Api) -> None:
    run = seed_run(api.ctx, "etl", NOW - timedelta(days=3))
    url = f"/api/runs/{run.id}/pin"

    assert api.client.post(url, json={"reason": "x"}).status_code == 401
    assert api.client.post(url, json={"reason": "x"}, headers=api.viewer).status_code == 403
    assert api.client.delete(url, headers=api.viewer).status_code == 403
    assert api.pin(run.id, "   ").status_code == 422
    assert api.pin(run.id, "x" * 1001).status_code == 422
    assert api.client.post(url, json={}, headers=api.admin).status_code == 422
    bad = api.client.post(url, json={"reason": "x", "by": "me"}, headers=api.admin)
    assert bad.status_code == 422
    assert api.pin(uuid.uuid4()).status_code == 404
    assert api.client.delete(f"/api/runs/{uuid.uuid4()}/pin", headers=api.admin).status_code == 404
    row = run_row(api.ctx, run.id)
    assert row is not None and row.pinned_at is None


def test_a_run_removed_by_retention_cannot_be_pinned(api: Api) -> None:
    ctx = api.ctx
    old = seed_run(ctx, "etl", NOW - timedelta(days=3))
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    data = ctx.settings.model_dump()
    data.update(log_retention_runs=1)
    run_pass(Context(settings=load_settings(**data), db=ctx.db), "test", now=NOW)
    assert run_row(ctx, old.id) is None  # S3 disabled: deleted, no archive

    assert api.pin(old.id).status_code == 404


def test_an_archived_run_removed_by_retention_is_pinned_with_a_legal_hold(
    locked_api: Api, s3: S3Env
) -> None:
    """A run that lives only in the archive is pinned on its ledger entry: its archived
    objects get the legal hold (a delete of them fails), every run object shows the pin,
    and unpinning lifts it (it was refused with 409 before)."""
    api, ctx = locked_api, locked_api.ctx
    old, keys = _archived_only(ctx)
    client = s3.client()
    versions = [client.head_object(Bucket=LOCKED, Key=k)["VersionId"] for k in keys]

    res = api.pin(str(old.id)[:8])

    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["run_id"], body["pinned"], body["changed"]) == (str(old.id), True, True)
    assert body["pinned_by"] == "token:ops" and body["pin_reason"] == "audit 2026"
    assert body["legal_hold"] == {"enabled": True, "on": True, "objects": keys, "error": None}
    for key, version in zip(keys, versions, strict=True):
        assert client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"]["Status"] == "ON"
        with pytest.raises(ClientError, match="AccessDenied"):
            client.delete_object(Bucket=LOCKED, Key=key, VersionId=version)
    shown = api.client.get(f"/api/runs/{old.id}", headers=api.viewer).json()
    assert shown["pinned_at"] == body["pinned_at"] and shown["pin_reason"] == "audit 2026"
    listed = api.client.get("/api/runs?include_archived=true", headers=api.viewer).json()
    (mine,) = [r for r in listed if r["id"] == str(old.id)]
    assert mine["pinned_by"] == "token:ops"
    assert api.pin(old.id).json()["changed"] is False  # again: the reason is replaced

    off = api.unpin(old.id).json()

    assert (off["pinned"], off["changed"], off["legal_hold"]["objects"]) == (False, True, keys)
    assert client.get_object_legal_hold(Bucket=LOCKED, Key=keys[0])["LegalHold"]["Status"] == "OFF"
    assert api.client.get(f"/api/runs/{old.id}", headers=api.viewer).json()["pinned_at"] is None
    assert api.unpin(old.id).json()["changed"] is False
    client.delete_object(Bucket=LOCKED, Key=keys[0], VersionId=versions[0])  # allowed again


def test_legal_hold_blocks_deleting_a_pinned_runs_objects_until_unpinned(
    locked_api: Api, s3: S3Env
) -> None:
    api, ctx = locked_api, locked_api.ctx
    data = ctx.settings.model_dump()
    data.update(log_max_size_mb=1)
    sized = Context(settings=load_settings(**data), db=ctx.db)
    big = seed_run(ctx, "etl", NOW - timedelta(hours=1), log=b"a line of log text\n" * 100_000)
    assert run_pass(sized, "test", now=NOW).archived_before_truncation == 1
    key = ledger(ctx)[big.id].log_key
    assert key is not None
    client = s3.client()
    version = client.head_object(Bucket=LOCKED, Key=key)["VersionId"]

    body = api.pin(big.id).json()

    assert body["legal_hold"] == {"enabled": True, "on": True, "objects": [key], "error": None}
    assert client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"]["Status"] == "ON"
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=LOCKED, Key=key, VersionId=version)

    off = api.unpin(big.id).json()

    assert off["legal_hold"]["objects"] == [key] and off["legal_hold"]["error"] is None
    assert client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"]["Status"] == "OFF"
    client.delete_object(Bucket=LOCKED, Key=key, VersionId=version)  # allowed again


def test_objects_archived_for_a_run_pinned_meanwhile_get_the_hold(
    locked_api: Api, s3: S3Env
) -> None:
    ctx = locked_api.ctx
    data = ctx.settings.model_dump()
    data.update(log_retention_runs=1)
    ctx = Context(settings=load_settings(**data), db=ctx.db)
    old = seed_run(ctx, "etl", NOW - timedelta(days=3))
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    policy = pipeline_policy(ctx.settings, "etl")
    planned = [a for b in selection.deletion_candidates(ctx.db, "etl", policy, NOW) for a in b]

    def pin_during_upload(method: str, path: str) -> bool:
        if method == "PUT" and str(old.id) in path and not pins.pinned(ctx.db, old.id):
            pins.pin(ctx.db, ctx.settings, old.id, "legal request", "auditor")
        return False

    s3.proxy.delay(0, match=pin_during_upload)
    summary = PassSummary(trigger="test")
    p = PassRun(ctx, summary, NOW, archive.open_store(ctx.settings), None)
    with ThreadPoolExecutor(2) as pool:  # the pass's own path: chunked, batched commits
        batches.run_actions(p, pool, planned)

    assert (summary.archived_runs, summary.deleted_runs, summary.kept_runs) == (1, 0, 1)
    entry = ledger(ctx)[old.id]
    client = s3.client()
    for key in (entry.log_key, entry.metrics_key):
        assert key is not None
        hold = client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"]["Status"]
        assert hold == "ON", key
    assert old.log.exists() and old.metrics.exists()


def test_a_bucket_without_object_lock_is_reported_and_the_pin_stands(
    locked_api: Api, s3: S3Env
) -> None:
    api, ctx = locked_api, locked_api.ctx
    data = ctx.settings.model_dump()
    data.update(s3_bucket=s3.bucket, log_max_size_mb=1)  # the plain bucket
    plain = Context(settings=load_settings(**data), db=ctx.db)
    big = seed_run(ctx, "etl", NOW - timedelta(hours=1), log=b"a line of log text\n" * 100_000)
    assert run_pass(plain, "test", now=NOW).archived_before_truncation == 1

    state = pins.pin(plain.db, plain.settings, big.id, "audit", "test")

    assert state.pinned and state.legal_hold.objects == []
    assert state.legal_hold.error is not None
    assert "has no Object Lock configuration" in state.legal_hold.error
    row = run_row(ctx, big.id)
    assert row is not None and row.pin_reason == "audit"
    assert api.client.get(f"/api/runs/{big.id}", headers=api.viewer).json()["pin_reason"] == "audit"


def test_s3_down_while_an_archived_run_is_pinned_the_pin_stands_and_says_so(
    locked_api: Api, s3: S3Env
) -> None:
    """A run that lives only in the archive, pinned while S3 is unreachable: the pin is
    recorded on its ledger entry, the response names the failed hold (no secret in it),
    and pinning again once S3 is back places the hold."""
    api, ctx = locked_api, locked_api.ctx
    old, keys = _archived_only(ctx)
    client = s3.client()

    s3.proxy.stop()  # the network edge: nothing listens on the endpoint any more
    try:
        res = api.pin(old.id)
    finally:
        s3.proxy.start()

    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["pinned"], body["changed"]) == (True, True)
    hold = body["legal_hold"]
    assert hold["enabled"] is True and hold["on"] is True and hold["objects"] == []
    assert hold["error"] and s3.secret_key not in res.text
    assert ledger(ctx)[old.id].pinned_at is not None  # the pin stands on the ledger entry
    for key in keys:  # and nothing was held
        assert (
            client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"].get("Status") != "ON"
        )
    shown = api.client.get(f"/api/runs/{old.id}", headers=api.viewer).json()
    assert shown["pin_reason"] == "audit 2026"

    again = api.pin(old.id).json()  # S3 back: pinning again places the hold
    assert again["changed"] is False and again["legal_hold"]["error"] is None
    assert again["legal_hold"]["objects"] == keys
    for key in keys:
        assert client.get_object_legal_hold(Bucket=LOCKED, Key=key)["LegalHold"]["Status"] == "ON"
