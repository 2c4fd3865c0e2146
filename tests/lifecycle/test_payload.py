"""A webhook run's payload.json is archived (verified) with its log and removed with its
run folder, so that retention leaves no folder behind and loses nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle.cleanup import run_pass
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, keys, object_bytes, seed_series

PAYLOAD = b'{"order": 42, "note": "\\u00e4"}'


@pytest.fixture
def s3_ctx(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def test_payload_is_archived_and_the_run_folder_removed(s3_ctx: Context, s3: S3Env) -> None:
    old, new = seed_series(s3_ctx, "hooked", 2)
    (old.log.parent / "payload.json").write_bytes(PAYLOAD)
    summary = run_pass(s3_ctx, "test", now=NOW)
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    key = f"pipeline-logs/hooked/{old.id}/payload.json"
    assert key in keys(s3.client(), s3.bucket)
    assert object_bytes(s3.client(), s3.bucket, key) == PAYLOAD
    assert not old.log.parent.exists()
    assert new.log.exists()


def test_payload_failure_to_archive_keeps_everything(s3_ctx: Context, s3: S3Env) -> None:
    old, _ = seed_series(s3_ctx, "hooked", 2)
    (old.log.parent / "payload.json").write_bytes(PAYLOAD)
    s3.proxy.fail(500, match=lambda m, p: m == "PUT" and p.endswith("payload.json"))
    summary = run_pass(s3_ctx, "test", now=NOW)
    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    assert old.log.exists() and (old.log.parent / "payload.json").read_bytes() == PAYLOAD
    s3.proxy.clear()
    again = run_pass(s3_ctx, "test", now=NOW)
    assert again.deleted_runs == 1 and not old.log.parent.exists()


def test_without_s3_the_payload_goes_with_its_run(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    ctx = bootstrap(load_settings())
    old, _ = seed_series(ctx, "hooked", 2)
    (old.log.parent / "payload.json").write_bytes(PAYLOAD)
    assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
    assert not old.log.parent.exists()
    ctx.db.dispose()
