"""The cleanup pass against a real S3 server (moto) behind a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.errors import ArchiveError, PassAlreadyRunning
from fastflow.lifecycle.cleanup import PassSummary, run_pass
from fastflow.lifecycle.lock import PassLock
from tests.harness.faultproxy import method_is
from tests.harness.fixtures import S3Env
from tests.seeding import (
    NOW,
    failures,
    keys,
    ledger,
    object_bytes,
    pending_entry,
    run_row,
    seed_run,
    seed_series,
    unchanged,
)


def tune(ctx: Context, **overrides: Any) -> Context:
    """The same database with other settings (validated like the environment)."""
    data = ctx.settings.model_dump()
    data.update(overrides)
    return Context(settings=load_settings(**data), db=ctx.db)


@pytest.fixture
def s3_app(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("S3_READ_TIMEOUT", "2")
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def _key(run_id: object, pipeline: str, name: str = "run.log") -> str:
    return f"pipeline-logs/{pipeline}/{run_id}/{name}"


def _pass(ctx: Context, **kw: Any) -> PassSummary:
    return run_pass(ctx, "test", now=NOW, **kw)


# --- the three scenarios ----------------------------------------------------------------


def test_retention_by_count_archives_verifies_then_deletes(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=2)
    runs = seed_series(ctx, "etl", 5)
    summary = _pass(ctx)
    assert (summary.archived_runs, summary.deleted_runs) == (3, 3)
    assert (summary.deleted_logs, summary.deleted_metrics) == (3, 3)
    assert summary.backup_failures == 0 and summary.planned_runs == 3
    client = s3.client()
    entries = ledger(ctx)
    for old in runs[:3]:
        assert not old.log.exists() and not old.metrics.exists()
        assert not old.log.parent.exists()
        assert run_row(ctx, old.id) is None
        assert object_bytes(client, s3.bucket, _key(old.id, "etl")) == old.log_bytes
        assert object_bytes(client, s3.bucket, _key(old.id, "etl", "metrics.jsonl")) == (
            old.metrics_bytes
        )
        head = client.head_object(Bucket=s3.bucket, Key=_key(old.id, "etl"))
        meta = head["Metadata"]
        assert meta["sha256"] == old.sha and meta["run_id"] == str(old.id)
        assert {
            "pipeline_name",
            "started_at",
            "finished_at",
            "status",
            "triggered_by",
            "exit_code",
        } <= set(meta)
        entry = entries[old.id]
        assert entry.log_sha256 == old.sha and entry.log_size == len(old.log_bytes)
        assert entry.local_deleted_at is not None and entry.bucket == s3.bucket
    for kept in runs[3:]:
        assert kept.log.exists() and run_row(ctx, kept.id) is not None
    assert summary.bytes_archived == sum(len(r.log_bytes) + len(r.metrics_bytes) for r in runs[:3])


def test_retention_by_age(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_days=7)
    old = seed_run(ctx, "daily", NOW - timedelta(days=8))
    young = seed_run(ctx, "daily", NOW - timedelta(days=6))
    summary = _pass(ctx)
    assert summary.archived_runs == 1 and summary.deleted_runs == 1
    assert run_row(ctx, old.id) is None and not old.log.exists()
    assert run_row(ctx, young.id) is not None and young.log.exists()
    assert _key(old.id, "daily") in keys(s3.client(), s3.bucket)


def test_oversized_log_is_archived_whole_then_truncated(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_max_size_mb=1)
    big = seed_run(ctx, "big", NOW - timedelta(hours=1), log=b"line of text\n" * 200_000)
    summary = _pass(ctx)
    assert summary.truncated_logs == 1 and summary.archived_runs == 0
    assert summary.archived_before_truncation == 1
    assert big.log.stat().st_size <= 1024 * 1024
    assert big.log.read_bytes().startswith(b"[... ")
    row = run_row(ctx, big.id)
    assert row is not None and row.log_size == big.log.stat().st_size
    assert keys(s3.client(), s3.bucket) == {_key(big.id, "big")}
    assert object_bytes(s3.client(), s3.bucket, _key(big.id, "big")) == big.log_bytes
    entry = ledger(ctx)[big.id]
    assert entry.log_truncated_at is not None and entry.local_deleted_at is None
    assert entry.local_log_size == big.log.stat().st_size


def test_oversized_log_is_truncated_without_archive_when_s3_is_disabled(
    s3_app: Context, s3: S3Env
) -> None:
    ctx = tune(s3_app, log_max_size_mb=1, s3_backup_enabled=False)
    big = seed_run(ctx, "big", NOW - timedelta(hours=1), log=b"line of text\n" * 200_000)
    summary = _pass(ctx)
    assert summary.truncated_logs == 1 and summary.archived_before_truncation == 0
    assert big.log.stat().st_size <= 1024 * 1024
    assert keys(s3.client(), s3.bucket) == set()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1.6 MB filesystem (tmpfs), so that writes fail with ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {res.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_truncation_failure_falls_back_to_archive_and_drops_files(
    s3_app: Context, s3: S3Env, small_disk: Path
) -> None:
    ctx = tune(s3_app, log_max_size_mb=1, logs_dir=str(small_disk / "logs"))
    content = b"".join(b"%07d some log text of a noisy pipeline\n" % i for i in range(32_000))
    assert len(content) > 1_300_000  # the 1 MB tail copy cannot fit in what is left
    big = seed_run(ctx, "big", NOW - timedelta(hours=1), log=content)
    summary = _pass(ctx)
    assert summary.truncated_logs == 0
    assert summary.dropped_files_runs == 1 and summary.archived_runs == 1
    assert summary.deleted_runs == 0 and summary.backup_failures == 0
    assert not big.log.exists() and not big.metrics.exists()
    assert not list(big.log.parent.parent.glob("*/.truncate-*"))
    kept = run_row(ctx, big.id)
    assert kept is not None and kept.log_file is None and kept.metrics_file is None
    assert object_bytes(s3.client(), s3.bucket, _key(big.id, "big")) == content
    entry = ledger(ctx)[big.id]
    assert entry.reason == "archive_and_drop_files" and entry.local_deleted_at is not None


def test_truncation_failure_with_s3_down_keeps_everything(
    s3_app: Context, s3: S3Env, small_disk: Path
) -> None:
    ctx = tune(s3_app, log_max_size_mb=1, logs_dir=str(small_disk / "logs"))
    content = b"z" * 80 + b"\n"
    big = seed_run(ctx, "big", NOW - timedelta(hours=1), log=content * 17_000)
    s3.proxy.stop()
    with unchanged(big.log):
        summary = _pass(ctx)
    assert summary.backup_failures == 1 and summary.dropped_files_runs == 0
    row = run_row(ctx, big.id)
    assert row is not None and row.log_file is not None


# --- no backup ---------------------------------------------------------------------------


def test_s3_disabled_deletes_without_upload(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, s3_backup_enabled=False)
    old, new = seed_series(ctx, "p", 2)
    summary = _pass(ctx)
    assert summary.deleted_runs == 1 and summary.archived_runs == 0
    assert not old.log.exists() and run_row(ctx, old.id) is None
    assert new.log.exists()
    assert keys(s3.client(), s3.bucket) == set() and s3.proxy.requests == []


def test_run_without_files_is_deleted_even_when_s3_is_down(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1)
    empty = seed_run(ctx, "p", NOW - timedelta(days=3), metrics=False, write_log=False)
    seed_run(ctx, "p", NOW - timedelta(days=1))
    s3.proxy.stop()
    summary = _pass(ctx)
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    assert run_row(ctx, empty.id) is None


def test_incomplete_s3_config_deletes_nothing_that_needs_an_archive(
    s3_app: Context, s3: S3Env
) -> None:
    ctx = tune(s3_app, log_retention_runs=1, s3_bucket=None, s3_secret_access_key=None)
    old, _ = seed_series(ctx, "p", 2)
    empty = seed_run(ctx, "p", NOW - timedelta(days=5), metrics=False, write_log=False)
    with unchanged(old.log):
        summary = _pass(ctx)
    assert summary.config_error is not None
    assert "S3_BUCKET" in summary.config_error and "S3_SECRET_ACCESS_KEY" in summary.config_error
    assert run_row(ctx, old.id) is not None
    assert run_row(ctx, empty.id) is None  # nothing to archive: deleted as before
    assert summary.skipped_runs == 1 and summary.deleted_runs == 1
    (failure,) = failures(ctx)
    assert failure.run_id is None and "S3_BUCKET" in failure.error_message


# --- failures: nothing deleted, recorded, retried, resolved --------------------------------


def _assert_kept(ctx: Context, runs: list[Any]) -> None:
    for r in runs:
        assert r.log.read_bytes() == r.log_bytes and r.metrics.exists()
        assert run_row(ctx, r.id) is not None


FAULTS: dict[str, tuple[Callable[[S3Env], object], str]] = {
    "refused": (lambda s3: s3.proxy.stop(), "connection refused at http://127.0.0.1:"),
    "500": (lambda s3: s3.proxy.fail(500), "S3 server error 500"),
    "503": (lambda s3: s3.proxy.fail(503, code="ServiceUnavailable"), "S3 server error 503"),
    "slow": (lambda s3: s3.proxy.delay(5), "read timeout"),
    "credentials": (
        lambda s3: s3.proxy.fail(403, code="InvalidAccessKeyId"),
        "access denied (InvalidAccessKeyId)",
    ),
    "dropped": (lambda s3: s3.proxy.drop(match=method_is("PUT"), after_bytes=100), "connection"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_upload_fault_keeps_everything_and_next_pass_recovers(
    s3_app: Context, s3: S3Env, fault: str
) -> None:
    inject, text = FAULTS[fault]
    ctx = tune(s3_app, log_retention_runs=1)
    runs = seed_series(ctx, "p", 3)
    inject(s3)
    summary = _pass(ctx)
    _assert_kept(ctx, runs)
    assert summary.archived_runs == 0 and summary.deleted_runs == 0
    assert summary.backup_failures >= 1
    assert summary.backup_failures + summary.skipped_runs == 2
    recorded = failures(ctx)
    assert recorded and all(text in f.error_message for f in recorded), recorded[0].error_message
    assert s3.secret_key not in recorded[0].error_message
    assert ledger(ctx) == {}
    # the server is back: the next pass archives and resolves the failures
    s3.proxy.clear()
    if not s3.proxy.running:
        s3.proxy.start()
    again = _pass(ctx)
    assert again.archived_runs == 2 and again.deleted_runs == 2 and again.backup_failures == 0
    assert failures(ctx) == []
    assert all(f.resolved_at is not None for f in failures(ctx, unresolved=False))


def test_missing_bucket_is_named(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, s3_bucket="no-such-bucket")
    runs = seed_series(ctx, "p", 2)
    summary = _pass(ctx)
    _assert_kept(ctx, runs)
    assert summary.backup_failures == 1
    assert failures(ctx)[0].error_message == "bucket 'no-such-bucket' does not exist"


def test_503_once_then_success_is_retried_within_the_pass(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "p", 2)
    s3.proxy.fail(503, times=1, match=method_is("PUT"), code="SlowDown")
    summary = _pass(ctx)
    assert summary.archived_runs == 1 and summary.backup_failures == 0
    assert run_row(ctx, old.id) is None


def test_s3_down_ends_the_pass_quickly_and_skips_the_rest(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=2)
    runs = seed_series(ctx, "p", 30)
    s3.proxy.stop()
    summary = _pass(ctx)
    _assert_kept(ctx, runs)
    assert summary.backup_failures >= 3 and summary.skipped_runs >= 20
    assert summary.backup_failures + summary.skipped_runs == 29
    assert summary.duration_s < 60


def test_checksum_mismatch_is_refused(s3_app: Context, s3: S3Env) -> None:
    store = archive.open_store(s3_app.settings)
    client = s3.client()
    client.put_object(
        Bucket=s3.bucket, Key="k/run.log", Body=b"stored bytes", Metadata={"sha256": "0" * 64}
    )
    with pytest.raises(ArchiveError, match="checksum mismatch"):
        store.verify("k/run.log", len(b"stored bytes"), "f" * 64)
    with pytest.raises(ArchiveError, match="has 12 bytes, expected 13"):
        store.verify("k/run.log", 13, "0" * 64)
    with pytest.raises(ArchiveError, match="does not exist"):
        store.verify("k/missing.log", 1, "0" * 64)


@pytest.mark.parametrize("size", ["20 KB", "5 MiB", "12 MiB in parts"])
def test_bytes_changed_on_the_way_to_the_server_are_never_deleted_locally(
    s3_app: Context, s3: S3Env, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside fault matrix: a server that does not check the SHA-256 it is sent (moto,
    some gateways) stored bytes changed in transit, echoed the checksum back, and the
    pass deleted the only good copy. The server's ETag — the MD5 it computes of what it
    stored — is compared now: whole-object MD5, or MD5 of the parts' MD5s for a
    multipart upload."""
    from fastflow.archive import s3 as s3mod

    if size == "12 MiB in parts":  # the real threshold is 64 MiB: parts of 5 MiB here
        monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", 8 * 1024 * 1024)
        monkeypatch.setattr(s3mod, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
        monkeypatch.setattr(s3mod, "_stores", type(s3mod._stores)())
    length = {"20 KB": 20_000, "5 MiB": 5 * 1024 * 1024, "12 MiB in parts": 12 * 1024 * 1024}
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=1)
    data = bytes(range(256)) * (length[size] // 256)
    old = seed_run(ctx, "p", NOW - timedelta(days=2), log=data)
    new = seed_run(ctx, "p", NOW - timedelta(days=1))
    s3.proxy.corrupt_body(match=method_is("PUT"))
    summary = _pass(ctx)
    _assert_kept(ctx, [old, new])
    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert "the MD5 of the bytes sent: it stored other bytes" in failure.error_message
    # the link is healthy again: the next pass archives the run and deletes it
    s3.proxy.clear()
    again = _pass(ctx)
    assert again.deleted_runs == 1 and run_row(ctx, old.id) is None
    assert object_bytes(s3.client(), s3.bucket, _key(old.id, "p")) == data


def test_a_pass_heads_its_first_upload_and_each_put_whose_answer_proves_nothing(
    s3_app: Context, s3: S3Env
) -> None:
    """One upload at a time: the pass's first object is confirmed by a HEAD, the others
    by their PutObject answers (MD5 ETags of the bytes sent) — except one a gateway
    answered 200 without storing it: no ETag, so a HEAD, which finds nothing. That run
    keeps its files and row; the others are archived and deleted."""
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=1)
    *old, newest = seed_series(ctx, "p", 5)
    lost = old[2]
    s3.proxy.fail(200, match=lambda m, p: m == "PUT" and str(lost.id) in p, body="")
    s3.proxy.clear_requests()

    summary = _pass(ctx)

    assert summary.deleted_runs == 3 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert "does not exist" in failure.error_message
    _assert_kept(ctx, [lost, newest])
    heads = [r.path for r in s3.proxy.seen("HEAD", "/pipeline-logs/p/")]
    assert len(heads) == 2 and str(lost.id) in heads[1]
    for run in (old[0], old[1], old[3]):
        assert run_row(ctx, run.id) is None
        assert object_bytes(s3.client(), s3.bucket, _key(run.id, "p")) == run.log_bytes


def test_each_pass_in_a_process_heads_its_first_upload_again(s3_app: Context, s3: S3Env) -> None:
    """The store (one per settings in the process) forgets at each pass what the last
    one learned of the server's answers."""
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=1)
    seed_series(ctx, "p", 3)
    s3.proxy.clear_requests()
    assert _pass(ctx).deleted_runs == 2
    seed_run(ctx, "p", NOW - timedelta(hours=1))
    first = s3.proxy.seen("HEAD", "/pipeline-logs/p/")
    s3.proxy.clear_requests()
    assert _pass(ctx).deleted_runs == 1
    second = s3.proxy.seen("HEAD", "/pipeline-logs/p/")
    assert len(first) == 1 and len(second) == 1


def test_a_pass_hashes_each_mid_size_log_once_from_its_first_upload(
    s3_app: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run's small metrics file is uploaded and verified before its log, so even the
    pass's first logs — one per worker, in flight at once — find the server's ETags
    known to be MD5s and are not hashed a second time as they are sent."""
    from fastflow.archive import s3 as s3mod
    from tests.archive.test_upload_paths import hashed_bytes

    monkeypatch.setattr(s3mod, "_stores", type(s3mod._stores)())  # a store new to ETags
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=4)
    size = s3mod.SMALL_FILE + 4096
    old = [seed_run(ctx, "p", NOW - timedelta(days=10 - i), log=os.urandom(size)) for i in range(5)]
    seed_run(ctx, "p", NOW - timedelta(days=1))
    seen = hashed_bytes(monkeypatch)
    summary = _pass(ctx)
    assert summary.deleted_runs == len(old) and summary.backup_failures == 0
    assert size * len(old) <= seen["sha256"] < size * len(old) + 100_000


def test_on_a_server_that_checks_sha256s_a_body_changed_on_the_way_is_never_deleted(
    s3_app: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS and MinIO refuse a body that does not match its SHA-256 (the proxy does it
    here): a log hashed once, without an MD5, is still never deleted unless the server
    took exactly those bytes."""
    from fastflow.archive import s3 as s3mod

    monkeypatch.setattr(s3mod, "_stores", type(s3mod._stores)())
    s3.proxy.check_sha256()
    ctx = tune(s3_app, log_retention_runs=1, s3_max_concurrency=1)
    data = os.urandom(s3mod.SMALL_FILE + 4096)
    old = seed_run(ctx, "p", NOW - timedelta(days=2), log=data)
    new = seed_run(ctx, "p", NOW - timedelta(days=1))
    s3.proxy.corrupt_body(match=lambda method, path: method == "PUT" and "/run.log" in path)
    summary = _pass(ctx)
    _assert_kept(ctx, [old, new])
    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert "the S3 server refused run.log: the bytes it received do not match" in (
        failure.error_message
    )
    s3.proxy.clear()
    s3.proxy.check_sha256()
    again = _pass(ctx)
    assert again.deleted_runs == 1 and run_row(ctx, old.id) is None
    assert object_bytes(s3.client(), s3.bucket, _key(old.id, "p")) == data


def test_an_etag_that_is_not_an_md5_is_not_compared(s3_app: Context, s3: S3Env) -> None:
    """SSE-KMS and SSE-C objects (and servers with other ETags) are verified by size and
    SHA-256 alone; ``S3_VERIFY_ETAG=false`` turns the comparison off."""
    store = archive.open_store(s3_app.settings)
    body = b"stored bytes"
    s3.client().put_object(
        Bucket=s3.bucket, Key="k/run.log", Body=body, Metadata={"sha256": "0" * 64}
    )
    with pytest.raises(ArchiveError, match="not 00000000000000000000000000000000"):
        store.verify("k/run.log", len(body), "0" * 64, "0" * 32)
    store.verify("k/run.log", len(body), "0" * 64, hashlib.md5(body).hexdigest())
    store.verify("k/run.log", len(body), "0" * 64)  # (objects archived before: no MD5)
    off = archive.open_store(tune(s3_app, s3_verify_etag=False).settings)
    off.verify("k/run.log", len(body), "0" * 64, "0" * 32)


def test_local_file_changed_after_archiving_is_not_deleted(s3_app: Context, s3: S3Env) -> None:
    """A ledger entry whose local file no longer matches the archive keeps the file."""
    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "p", 2)
    s3.proxy.fail(500, match=lambda m, p: m == "DELETE")  # irrelevant; keep proxy in path
    key = pending_entry(ctx, s3.bucket, old, "p")
    old.log.write_bytes(b"rewritten after archiving\n")
    summary = _pass(ctx)
    assert old.log.read_bytes() == b"rewritten after archiving\n"
    assert run_row(ctx, old.id) is not None
    assert "changed since it was archived" in failures(ctx)[0].error_message
    assert summary.backup_failures == 1
    # the archived copy was not overwritten
    assert object_bytes(s3.client(), s3.bucket, key) == old.log_bytes


def _pending_entry(ctx: Context, s3: S3Env, run: Any) -> str:
    """``run``'s log archived and recorded as by a pass killed before it deleted (the
    run has no metrics file); the object's key."""
    run.metrics.unlink()
    return pending_entry(ctx, s3.bucket, run, "p")


def test_a_pending_deletion_whose_object_holds_other_bytes_archives_the_local_copy_again(
    s3_app: Context, s3: S3Env
) -> None:
    """An outside audit: finishing an interrupted deletion checked the object's size and
    the SHA-256 in its metadata — which fastflow wrote itself — and deleted the local
    log although the object had been replaced by other bytes of the same size with that
    metadata copied. The server's MD5 ETag of what it holds is compared with the local
    copy's MD5 now: the local copy (the bytes the ledger recorded) is archived again and
    verified, and only then deleted."""
    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "p", 2)
    key = _pending_entry(ctx, s3, old)
    client = s3.client()
    head = client.head_object(Bucket=s3.bucket, Key=key)
    other = bytes(b ^ 0x01 for b in old.log_bytes)  # same size, every byte changed
    client.put_object(Bucket=s3.bucket, Key=key, Body=other, Metadata=head["Metadata"])
    summary = _pass(ctx)
    assert summary.backup_failures == 0, failures(ctx)
    assert summary.rearchived_runs == 1 and summary.deleted_runs == 1
    assert object_bytes(client, s3.bucket, key) == old.log_bytes
    assert not old.log.exists() and run_row(ctx, old.id) is None


def test_a_pending_deletion_of_a_compressed_object_reads_it_back(
    s3_app: Context, s3: S3Env
) -> None:
    """A compressed object's ETag cannot be computed from the local copy: finishing the
    deletion reads the object back and hashes it. Replaced by other compressed bytes
    (metadata copied), the local copy is archived again; as archived, it is deleted."""
    from fastflow.db.models import ArchivedRun

    ctx = tune(s3_app, log_retention_runs=1, s3_compression="zstd")
    old, _ = seed_series(ctx, "p", 2)
    old.metrics.unlink()
    store = archive.open_store(ctx.settings)
    stored = store.put_verified(_key(old.id, "p") + ".zst", old.log, {"run_id": str(old.id)})
    assert stored.encoding == "zstd"
    with ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=old.id,
                pipeline_name="p",
                status="SUCCESS",
                triggered_by="schedule",
                started_at=NOW,
                bucket=s3.bucket,
                log_key=stored.key,
                log_size=stored.size,
                log_sha256=stored.sha256,
                encoding="zstd",
                log_original_size=stored.original_size,
                log_original_sha256=stored.original_sha256,
                reason="archive_and_delete_run",
            )
        )
    client = s3.client()
    archived = object_bytes(client, s3.bucket, stored.key)
    head = client.head_object(Bucket=s3.bucket, Key=stored.key)
    import zstandard

    other = zstandard.ZstdCompressor().compress(bytes(b ^ 0x01 for b in old.log_bytes))
    other = (other + b"\0" * len(archived))[: len(archived)]  # (the same size)
    client.put_object(Bucket=s3.bucket, Key=stored.key, Body=other, Metadata=head["Metadata"])
    summary = _pass(ctx)
    assert summary.backup_failures == 0, failures(ctx)
    assert summary.rearchived_runs == 1 and summary.deleted_runs == 1
    assert object_bytes(client, s3.bucket, stored.key) == archived
    assert not old.log.exists() and run_row(ctx, old.id) is None


def test_a_pending_deletion_whose_object_cannot_be_replaced_keeps_the_local_copy(
    s3_app: Context, s3: S3Env
) -> None:
    """The same, with the server refusing the new upload: nothing is deleted, the
    failure is reported, and the object is left as it is."""
    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "p", 2)
    key = _pending_entry(ctx, s3, old)
    client = s3.client()
    head = client.head_object(Bucket=s3.bucket, Key=key)
    other = bytes(b ^ 0x01 for b in old.log_bytes)
    client.put_object(Bucket=s3.bucket, Key=key, Body=other, Metadata=head["Metadata"])
    s3.proxy.fail(403, match=method_is("PUT"))
    summary = _pass(ctx)
    # (the resume phase's failure, and the main path's for the same due run)
    assert summary.backup_failures >= 1 and summary.deleted_runs == 0
    assert all("AccessDenied" in f.error_message for f in failures(ctx))
    assert old.log.read_bytes() == old.log_bytes and run_row(ctx, old.id) is not None
    assert object_bytes(client, s3.bucket, key) == other


def test_a_pending_deletion_whose_object_holds_the_bytes_is_finished(
    s3_app: Context, s3: S3Env
) -> None:
    """The same check passes for the object as archived: the local files are deleted."""
    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "p", 2)
    key = _pending_entry(ctx, s3, old)
    summary = _pass(ctx)
    assert summary.backup_failures == 0, failures(ctx)
    assert not old.log.exists() and run_row(ctx, old.id) is None
    assert object_bytes(s3.client(), s3.bucket, key) == old.log_bytes


# --- names, active runs, dry run ----------------------------------------------------------


def test_non_ascii_pipeline_names_and_metadata(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1)
    name = "Übersicht 2024 — 日本"
    old, _ = seed_series(ctx, name, 2)
    summary = _pass(ctx)
    assert summary.archived_runs == 1
    head = s3.client().head_object(Bucket=s3.bucket, Key=_key(old.id, name))
    raw = head["Metadata"]["pipeline_name"]
    assert raw.isascii() and raw.startswith("=?UTF-8?B?")
    assert archive.decode_meta(raw) == name


@pytest.mark.parametrize("value", ["plain", "Grüße", "=?UTF-8?B?looks-encoded?=", "tab\there", ""])
def test_metadata_encoding_roundtrips(value: str) -> None:
    encoded = archive.encode_meta(value)
    assert encoded.isascii()
    assert archive.decode_meta(encoded) == value


def test_active_runs_are_never_touched(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, log_retention_days=1, log_max_size_mb=1)
    running = seed_run(ctx, "p", NOW - timedelta(days=400), status="RUNNING", log=b"x" * 2_000_000)
    pending = seed_run(ctx, "p", NOW - timedelta(days=300), status="PENDING")
    seed_series(ctx, "p", 3)
    with unchanged(running.log), unchanged(pending.log):
        summary = _pass(ctx)
    assert summary.deleted_runs == 2  # the newest finished run is kept
    assert run_row(ctx, running.id) is not None and run_row(ctx, pending.id) is not None
    assert not any(
        str(running.id) in k or str(pending.id) in k for k in keys(s3.client(), s3.bucket)
    )


def test_dry_run_changes_nothing(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, log_max_size_mb=1)
    runs = seed_series(ctx, "p", 3)
    big = seed_run(ctx, "q", NOW, log=b"y" * 1_500_000)
    with unchanged(runs[0].log), unchanged(big.log):
        summary = _pass(ctx, dry_run=True)
    assert summary.planned_runs == 2 and summary.planned_truncations == 1
    assert len(summary.plan) == 3
    planned = {(entry.action, entry.run_id) for entry in summary.plan}
    assert ("archive_and_delete_run", str(runs[0].id)) in planned
    assert ("truncate_log", str(big.id)) in planned
    assert all(run_row(ctx, r.id) is not None for r in runs)
    assert s3.proxy.requests == [] and ledger(ctx) == {}


# --- one pass at a time ---------------------------------------------------------------------


def test_second_pass_while_one_runs_fails_fast(s3_app: Context) -> None:
    with PassLock(s3_app.db), pytest.raises(PassAlreadyRunning):
        _pass(s3_app)


def test_concurrent_passes_on_postgres_one_runs(
    pg_url: str, s3: S3Env, ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ctx = tune(bootstrap(load_settings(database_url=pg_url)), log_retention_runs=1)
    seed_series(ctx, "p", 6)
    s3.proxy.delay(0.3, match=method_is("PUT"))  # keep the first pass busy for a while
    results: list[object] = []

    def attempt() -> None:
        other = Context(settings=ctx.settings, db=bootstrap(ctx.settings, recover=False).db)
        try:
            results.append(_pass(other))
        except PassAlreadyRunning as e:
            results.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    passes = [r for r in results if isinstance(r, PassSummary)]
    assert len(passes) == 1 and passes[0].archived_runs == 5
    assert sum(isinstance(r, PassAlreadyRunning) for r in results) == 2
    assert len(ledger(ctx)) == 5


# --- compression and server-side options ---------------------------------------------------


@pytest.mark.parametrize(("codec", "suffix"), [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_archive_verifies_stored_bytes_and_reads_back(
    s3_app: Context, s3: S3Env, codec: str, suffix: str
) -> None:
    import hashlib

    from fastflow.archive.audit import verify
    from fastflow.runs.readback import open_log

    ctx = tune(s3_app, log_retention_runs=1, s3_compression=codec)
    text = b"".join(
        b"[2026-01-01 00:00:00.000] line %d of a chatty log\\n" % i for i in range(20_000)
    )
    old = seed_run(ctx, "zip", NOW - timedelta(days=2), log=text)
    seed_run(ctx, "zip", NOW - timedelta(days=1))
    summary = _pass(ctx)
    assert summary.archived_runs == 1 and not old.log.exists()
    key = _key(old.id, "zip") + suffix
    client = s3.client()
    stored = object_bytes(client, s3.bucket, key)
    assert len(stored) < len(text) / 4  # log text compresses well
    meta = client.head_object(Bucket=s3.bucket, Key=key)["Metadata"]
    assert meta["sha256"] == hashlib.sha256(stored).hexdigest()
    assert meta["original_sha256"] == old.sha and meta["encoding"] == codec
    entry = ledger(ctx)[old.id]
    assert entry.encoding == codec and entry.log_original_sha256 == old.sha
    assert entry.log_size == len(stored) and entry.log_original_size == len(text)
    source = open_log(ctx, old.id, None)
    assert b"".join(source.chunks) == text and source.size == len(text)
    assert b"".join(open_log(ctx, old.id, None, tail_bytes=100).chunks) == text[-100:]
    assert verify(ctx, deep=True).ok


def test_server_side_encryption_and_storage_class_are_sent(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_retention_runs=1, s3_sse="AES256", s3_storage_class="STANDARD_IA")
    old, _ = seed_series(ctx, "enc", 2)
    assert _pass(ctx).archived_runs == 1
    head = s3.client().head_object(Bucket=s3.bucket, Key=_key(old.id, "enc"))
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"


def test_child_pass_gets_exactly_the_server_settings(
    s3_app: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastflow.lifecycle.child import settings_env

    ctx = tune(s3_app, s3_prefix="/", log_retention_runs=3, email_recipients=["a@b.org"])
    assert ctx.settings.s3_prefix == ""
    for key, value in settings_env(ctx.settings).items():
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again.s3_prefix == "" and again.log_retention_runs == 3
    assert again.email_recipients == ["a@b.org"]
    assert again.s3_secret_access_key == ctx.settings.s3_secret_access_key


def test_huge_tail_of_a_compressed_archive_streams(s3_app: Context, s3: S3Env) -> None:
    from fastflow.runs.readback import open_log

    ctx = tune(s3_app, log_retention_runs=1, s3_compression="zstd")
    text = b"".join(b"line %d\\n" % i for i in range(50_000))
    old = seed_run(ctx, "zt", NOW - timedelta(days=2), log=text)
    seed_run(ctx, "zt", NOW - timedelta(days=1))
    assert _pass(ctx).archived_runs == 1
    whole = open_log(ctx, old.id, None, tail_bytes=10**12)
    chunks = list(whole.chunks)
    assert b"".join(chunks) == text
    assert b"".join(open_log(ctx, old.id, None, tail_bytes=12).chunks) == text[-12:]


def test_server_side_sha256_is_sent_and_checked(s3_app: Context, s3: S3Env) -> None:
    import base64
    import hashlib

    ctx = tune(s3_app, log_retention_runs=1)
    old, _ = seed_series(ctx, "ck", 2)
    assert _pass(ctx).archived_runs == 1
    head = s3.client().head_object(Bucket=s3.bucket, Key=_key(old.id, "ck"), ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == old.sha
    # an object whose bytes differ from what its metadata claims is caught by the server's hash
    store = archive.open_store(ctx.settings)
    forged = b"x" * len(old.log_bytes)
    s3.client().put_object(
        Bucket=s3.bucket,
        Key="forged/run.log",
        Body=forged,
        ChecksumAlgorithm="SHA256",
        Metadata={"sha256": old.sha},
    )
    with pytest.raises(ArchiveError, match="server's SHA-256"):
        store.verify("forged/run.log", len(forged), old.sha)
    assert hashlib.sha256(forged).hexdigest() != old.sha


def test_the_server_runs_its_pass_at_a_lower_cpu_priority(s3_app: Context, s3: S3Env) -> None:
    import threading

    import psutil

    from fastflow.lifecycle.child import ENTRY_POINT, PASS_NICE, run_pass_in_child

    ctx = tune(s3_app, log_retention_runs=1)
    seed_run(ctx, "nice", NOW - timedelta(days=2))
    seed_run(ctx, "nice", NOW - timedelta(days=1))
    released = threading.Event()
    seen: list[int] = []

    def hold_upload(method: str, path: str) -> bool:
        # the child is uploading: read its priority, then let the upload through
        if method == "PUT" and not seen:
            for child in psutil.Process().children(recursive=True):
                if ENTRY_POINT in " ".join(child.cmdline()):
                    seen.append(child.nice())
            released.set()
        return False

    s3.proxy.delay(0, match=hold_upload)
    summary = run_pass_in_child(ctx, "test", timeout=120)

    assert released.is_set() and seen == [os.nice(0) + PASS_NICE]
    assert summary.archived_runs == 1 and summary.backup_failures == 0


@pytest.mark.parametrize("retention", ['{"runs": -3}', '{"keep_failed": -1}', '{"runs": "5"}'])
def test_an_invalid_retention_override_keeps_the_pipelines_runs_loudly(
    s3_app: Context, s3: S3Env, retention: str
) -> None:
    """Outside fault matrix: an invalid ``retention`` in ``pipeline.json`` was ignored and
    the stricter global limit applied, silently. The pass now keeps every run of that
    pipeline and records why (exit 1, notified like a failed backup); other pipelines
    are cleaned as before, and a dry run says so too."""
    ctx = tune(s3_app, log_retention_runs=1)
    folder = Path(ctx.settings.pipelines_dir) / "typo"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("print('x')\n")
    (folder / "pipeline.json").write_text(f'{{"retention": {retention}}}')
    kept = seed_series(ctx, "typo", 3)
    cleaned = seed_series(ctx, "fine", 3)
    planned = _pass(ctx, dry_run=True)
    assert [f.pipeline_name for f in planned.failures] == ["typo"]
    summary = _pass(ctx)
    _assert_kept(ctx, kept)
    assert summary.deleted_runs == 2 and run_row(ctx, cleaned[0].id) is None
    (failure,) = failures(ctx)
    assert failure.error_message.startswith("pipeline 'typo': PIPELINES_DIR/typo/pipeline.json")
    assert "retention." in failure.error_message and "its runs are kept" in failure.error_message
    assert str(ctx.settings.pipelines_dir) not in failure.error_message
    # fixed: the next pass applies the pipeline's own limit and resolves the failure
    (folder / "pipeline.json").write_text('{"retention": {"runs": 2}}')
    again = _pass(ctx)
    assert again.deleted_runs == 1 and failures(ctx) == []


def test_a_pass_aborts_the_multipart_uploads_a_killed_pass_left(
    s3_app: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside fault matrix: uploads cut off by SIGKILL stayed open for ever (their parts
    invisible, kept and billed). A pass aborts those under the prefix older than a day;
    one outside the prefix stays. (moto reports every upload as started in 2010, so the
    age limit itself is not exercised here: a younger upload could only be another
    pass's, and this pass holds the lock.)"""
    from fastflow.lifecycle import cleanup

    client = s3.client()

    def start(key: str) -> str:
        upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
        client.upload_part(
            Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024
        )
        return str(upload)

    start("pipeline-logs/p/left/run.log")
    outside = start("someone-else/big.bin")
    ctx = tune(s3_app, log_retention_runs=1)
    seed_series(ctx, "p", 2)
    monkeypatch.setattr(cleanup, "STALE_UPLOAD_AGE", timedelta(hours=1))
    summary = _pass(ctx)
    assert summary.stale_uploads_aborted == 1 and summary.backup_failures == 0
    left = client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [outside]
    client.abort_multipart_upload(Bucket=s3.bucket, Key="someone-else/big.bin", UploadId=outside)


@pytest.mark.parametrize(
    ("status", "code", "level"),
    [(501, "NotImplemented", "INFO"), (403, "AccessDenied", "WARNING")],
    ids=["not-implemented", "denied"],
)
def test_a_server_without_the_multipart_list_is_noted_not_warned_about(
    s3_app: Context, s3: S3Env, caplog: pytest.LogCaptureFixture, status: int, code: str, level: str
) -> None:
    """s3rver answers ``ListMultipartUploads`` with 501 NotImplemented: every pass warned
    "cannot abort stale multipart uploads". A server without the list gets a note; one
    that refuses it (a missing permission) still a warning; neither fails the pass."""

    def lists_uploads(method: str, path: str) -> bool:
        return method == "GET" and "uploads" in path.partition("?")[2].split("&")

    s3.proxy.fail(status, code=code, match=lists_uploads)
    ctx = tune(s3_app, log_retention_runs=1)
    seed_series(ctx, "p", 3)
    with caplog.at_level("INFO", logger="fastflow"):
        summary = _pass(ctx)
    assert summary.backup_failures == 0 and summary.deleted_runs == 2
    asked = [r.status for r in s3.proxy.requests if lists_uploads(r.method, r.path)]
    assert asked == [status], "the pass did not ask for the list once"
    notes = [r for r in caplog.records if "multipart uploads" in r.getMessage()]
    assert [r.levelname for r in notes] == [level], [r.getMessage() for r in notes]
