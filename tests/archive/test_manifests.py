"""Hash-chained manifests against the real S3 test server: written by every pass that
archives, chained by SHA-256, checked by ``fastflow archive verify --manifests``; written
under Object Lock retention (WORM) when configured."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from subprocess import CompletedProcess
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select, update

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, ArchiveManifest
from fastflow.lifecycle.cleanup import run_pass
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, keys, object_bytes, seed_run, seed_series

Cli = Callable[..., CompletedProcess[str]]
MANIFEST = re.compile(r"^pipeline-logs/_manifests/\d{4}/\d{2}/\d{2}/(\d+)\.jsonl$")
LINE_FIELDS = {
    "key",
    "size",
    "sha256",
    "original_sha256",
    "encoding",
    "run_id",
    "pipeline_name",
    "started_at",
    "archived_at",
}


def _ctx(s3: S3Env, **extra: Any) -> Context:
    values: dict[str, Any] = {k.lower(): v for k, v in s3.env().items()}
    return bootstrap(load_settings(**{**values, "log_retention_runs": 1, **extra}))


def _three_passes(ctx: Context) -> None:
    """Three passes, each archiving two runs of ``etl``."""
    seed_series(ctx, "etl", 3)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 2
    for hours in (12, 6):
        for minutes in (0, 1):
            seed_run(ctx, "etl", NOW - timedelta(hours=hours, minutes=-minutes))
        assert run_pass(ctx, "test", now=NOW).archived_runs == 2


def _manifest_keys(s3: S3Env) -> list[str]:
    """The manifests in the bucket, in the order of their pass."""
    found = [k for k in keys(s3.client(), s3.bucket, manifests=True) if "/_manifests/" in k]
    return sorted(found, key=lambda k: int(MANIFEST.match(k).group(1)))  # type: ignore[union-attr]


def _lines(s3: S3Env, key: str) -> list[dict[str, Any]]:
    data = object_bytes(s3.client(), s3.bucket, key)
    return [json.loads(line) for line in data.splitlines()]


def test_each_archiving_pass_writes_one_manifest_chained_to_the_one_before(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3)
    _three_passes(ctx)
    manifests = _manifest_keys(s3)
    assert len(manifests) == 3 and all(MANIFEST.match(k) for k in manifests)
    previous: str | None = None
    with ctx.db.session() as s:
        ledger = {str(e.run_id): e for e in s.scalars(select(ArchivedRun))}
        rows = {m.key: m for m in s.scalars(select(ArchiveManifest))}
    listed: set[str] = set()
    for key in manifests:
        data = object_bytes(s3.client(), s3.bucket, key)
        *objects, chain = _lines(s3, key)
        assert chain == {"previous": previous, "count": 4}  # two runs: log + metrics
        for line in objects:
            assert set(line) >= LINE_FIELDS
            entry = ledger[line["run_id"]]
            which = "log" if line["key"] == entry.log_key else "metrics"
            assert line["size"] == getattr(entry, f"{which}_size")
            assert line["sha256"] == getattr(entry, f"{which}_sha256")
            assert line["pipeline_name"] == "etl" and entry.manifest_key == key
            assert line["encoding"] is None and line["original_sha256"] == line["sha256"]
            listed.add(line["key"])
        digest = hashlib.sha256(data).hexdigest()
        assert rows[key].sha256 == digest and rows[key].previous_sha256 == previous
        head = s3.client().head_object(Bucket=s3.bucket, Key=key)
        assert head["Metadata"]["sha256"] == digest  # verified like a log
        previous = digest
    assert listed == {k for k in keys(s3.client(), s3.bucket) if "/_manifests/" not in k}

    assert run_pass(ctx, "test", now=NOW).archived_runs == 0  # nothing archived: no manifest
    assert len(_manifest_keys(s3)) == 3
    res = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["manifests_checked"] == 3 and report["objects_listed"] == 12


def test_an_edited_middle_manifest_is_named_and_so_is_a_missing_one(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    _three_passes(_ctx(s3))
    first, middle, last = _manifest_keys(s3)
    client = s3.client()
    data = object_bytes(client, s3.bucket, middle).decode()
    line = data.splitlines()[1]
    edited = line.replace('"size":', '"size":1', 1)
    client.put_object(Bucket=s3.bucket, Key=middle, Body=data.replace(line, edited).encode())
    res = cli("archive", "verify", "--manifests", env=s3.env())
    assert res.returncode == 1 and "Traceback" not in res.stderr
    changed = [row for row in res.stdout.splitlines() if row.startswith("CHANGED")]
    assert len(changed) == 1 and middle in changed[0] and first not in res.stdout

    client.delete_object(Bucket=s3.bucket, Key=last)
    report = json.loads(cli("archive", "verify", "--manifests", "--json", env=s3.env()).stdout)
    states = {(p["state"], p["manifest"]) for p in report["problems"]}
    assert ("changed", middle) in states and ("missing", last) in states
    assert not report["ok"]


def test_reordered_manifests_and_edited_ledger_entries_are_found(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3)
    _three_passes(ctx)
    first, middle, last = _manifest_keys(s3)
    client = s3.client()
    a, b = object_bytes(client, s3.bucket, middle), object_bytes(client, s3.bucket, last)
    client.put_object(Bucket=s3.bucket, Key=middle, Body=b)  # the bucket's order swapped
    client.put_object(Bucket=s3.bucket, Key=last, Body=a)
    report = json.loads(cli("archive", "verify", "--manifests", "--json", env=s3.env()).stdout)
    assert {(p["state"], p["manifest"]) for p in report["problems"]} >= {
        ("changed", middle),
        ("changed", last),
    }
    client.put_object(Bucket=s3.bucket, Key=middle, Body=a)
    client.put_object(Bucket=s3.bucket, Key=last, Body=b)
    assert cli("archive", "verify", "--manifests", env=s3.env()).returncode == 0

    with ctx.db.session() as s:  # the database's order swapped
        rows = {m.key: m for m in s.scalars(select(ArchiveManifest))}
        rows[middle].created_at, rows[last].created_at = (
            rows[last].created_at,
            rows[middle].created_at,
        )
    report = json.loads(cli("archive", "verify", "--manifests", "--json", env=s3.env()).stdout)
    assert {p["manifest"] for p in report["problems"] if p["state"] == "reordered"} == {
        middle,
        last,
    }
    with ctx.db.session() as s:
        rows = {m.key: m for m in s.scalars(select(ArchiveManifest))}
        rows[middle].created_at, rows[last].created_at = (
            rows[last].created_at,
            rows[middle].created_at,
        )

    (victim,) = [line for line in _lines(s3, first)[:-1] if line["key"].endswith("run.log")][:1]
    with ctx.db.session() as s:  # somebody edits the ledger
        s.execute(
            update(ArchivedRun)
            .where(ArchivedRun.log_key == victim["key"])
            .values(log_sha256="0" * 64)
        )
    report = json.loads(cli("archive", "verify", "--manifests", "--json", env=s3.env()).stdout)
    problems = [p for p in report["problems"] if p["state"] == "mismatch"]
    assert [(p["run_id"], p["key"], p["manifest"]) for p in problems] == [
        (victim["run_id"], victim["key"], first)
    ]
    assert any(p["state"] == "not_listed" and p["manifest"] == first for p in report["problems"])


def test_entries_a_pass_could_not_list_are_listed_by_the_next_pass(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3)
    seed_series(ctx, "etl", 3)
    s3.proxy.fail(503, match=lambda method, path: method == "PUT" and "_manifests" in path)
    summary = run_pass(ctx, "test", now=NOW)
    s3.proxy.clear()
    assert summary.archived_runs == 2 and summary.deleted_runs == 2  # logs safe regardless
    assert any("manifest was not written" in f.error for f in summary.failures)
    assert _manifest_keys(s3) == []
    res = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    report = json.loads(res.stdout)
    assert res.returncode == 1 and report["unlisted"] == 2
    assert {p["state"] for p in report["problems"]} == {"unlisted"}

    later = run_pass(ctx, "test", now=NOW)  # archives nothing new, lists the two
    assert later.archived_runs == 0 and later.backup_failures == 0
    (manifest,) = _manifest_keys(s3)
    assert _lines(s3, manifest)[-1] == {"previous": None, "count": 4}
    assert cli("archive", "verify", "--manifests", env=s3.env()).returncode == 0


def test_manifests_stay_uncompressed_while_logs_are_compressed(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3, s3_compression="gzip")
    seed_series(ctx, "etl", 2)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 1
    (manifest,) = _manifest_keys(s3)
    *objects, chain = _lines(s3, manifest)
    assert chain["count"] == 2 and {o["encoding"] for o in objects} == {"gzip"}
    assert all(o["key"].endswith(".gz") and o["sha256"] != o["original_sha256"] for o in objects)
    env = {**s3.env(), "S3_COMPRESSION": "gzip"}
    assert cli("archive", "verify", "--manifests", env=env).returncode == 0


WORM_BUCKET = "fastflow-worm"


def test_object_lock_retention_on_archives_and_manifests(s3: S3Env, ff_env: dict[str, str]) -> None:
    s3.client().create_bucket(Bucket=WORM_BUCKET, ObjectLockEnabledForBucket=True)
    ctx = _ctx(s3, s3_bucket=WORM_BUCKET, s3_object_lock_mode="COMPLIANCE", s3_object_lock_days=2)
    seed_series(ctx, "etl", 3)
    before = datetime.now(UTC)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 2
    client = s3.client()
    stored = keys(client, WORM_BUCKET, manifests=True)
    assert len(stored) == 5 and sum("/_manifests/" in k for k in stored) == 1
    for key in stored:
        head = client.head_object(Bucket=WORM_BUCKET, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=2) - timedelta(minutes=5) < until
        assert until < datetime.now(UTC) + timedelta(days=2, minutes=5)
        with pytest.raises(ClientError) as denied:  # WORM: no version can be deleted
            client.delete_object(Bucket=WORM_BUCKET, Key=key, VersionId=head["VersionId"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
