"""`fastflow archive verify|get|ls` against the real S3 server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.lifecycle.cleanup import run_pass
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, Seeded, seed_series

Cli = Callable[..., CompletedProcess[str]]


def _archive_three(s3: S3Env, ff_env: dict[str, str]) -> list[Seeded]:
    ctx = bootstrap(
        load_settings(**{k.lower(): v for k, v in s3.env().items()}, log_retention_runs=1)
    )
    runs = seed_series(ctx, "audit me", 4)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 3
    return runs[:3]


def test_verify_ok_then_missing_and_changed(cli: Cli, s3: S3Env, ff_env: dict[str, str]) -> None:
    runs = _archive_three(s3, ff_env)
    env = s3.env()
    res = cli("archive", "verify", "--json", env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["checked_runs"] == 3 and report["intact"] == 6
    client = s3.client()
    key0 = f"pipeline-logs/audit me/{runs[0].id}/run.log"
    key1 = f"pipeline-logs/audit me/{runs[1].id}/run.log"
    client.delete_object(Bucket=s3.bucket, Key=key0)
    head = client.head_object(Bucket=s3.bucket, Key=key1)
    client.put_object(Bucket=s3.bucket, Key=key1, Body=b"tampered", Metadata=head["Metadata"])
    res = cli("archive", "verify", "--json", env=env)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["missing"] == 1 and report["changed"] == 1 and report["intact"] == 4
    assert {p["key"] for p in report["problems"]} == {key0, key1}
    res = cli("archive", "verify", env=env)
    assert res.returncode == 1 and "MISSING" in res.stdout and "CHANGED" in res.stdout


def test_deep_verify_catches_same_size_tampering(
    cli: Cli, s3: S3Env, ff_env: dict[str, str]
) -> None:
    runs = _archive_three(s3, ff_env)
    client = s3.client()
    key = f"pipeline-logs/audit me/{runs[2].id}/run.log"
    original = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    head = client.head_object(Bucket=s3.bucket, Key=key)
    forged = bytes(reversed(original))
    assert len(forged) == len(original) and forged != original
    client.put_object(Bucket=s3.bucket, Key=key, Body=forged, Metadata=head["Metadata"])
    assert cli("archive", "verify", env=s3.env()).returncode == 0  # HEAD cannot see it
    res = cli("archive", "verify", "--deep", "--json", env=s3.env())
    assert res.returncode == 1
    (problem,) = json.loads(res.stdout)["problems"]
    assert problem["key"] == key and problem["state"] == "changed"
    assert hashlib.sha256(forged).hexdigest() in problem["detail"]


def test_an_object_restored_without_its_metadata_is_intact_when_its_bytes_match(
    cli: Cli, s3: S3Env, ff_env: dict[str, str]
) -> None:
    """Found by an outside audit: the quick check compared only the SHA-256 in the
    object's metadata, so a log copied back from another copy (same bytes, no metadata:
    ``aws s3 cp``, a bucket replication) stayed CHANGED for ever. Where the metadata
    lacks the SHA-256 or holds another one, the bytes are hashed and decide."""
    runs = _archive_three(s3, ff_env)
    client = s3.client()
    key0 = f"pipeline-logs/audit me/{runs[0].id}/run.log"
    key1 = f"pipeline-logs/audit me/{runs[1].id}/run.log"
    original = client.get_object(Bucket=s3.bucket, Key=key0)["Body"].read()
    client.put_object(Bucket=s3.bucket, Key=key0, Body=original)  # restored, no metadata
    head = client.head_object(Bucket=s3.bucket, Key=key1)
    forged = bytes(reversed(client.get_object(Bucket=s3.bucket, Key=key1)["Body"].read()))
    metadata = {**head["Metadata"], "sha256": hashlib.sha256(forged).hexdigest()}
    client.put_object(Bucket=s3.bucket, Key=key1, Body=forged, Metadata=metadata)

    res = cli("archive", "verify", "--json", env=s3.env())

    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["intact"] == 5 and report["changed"] == 1
    (problem,) = report["problems"]  # the forged one, whose metadata matches its bytes
    assert problem["key"] == key1 and hashlib.sha256(forged).hexdigest() in problem["detail"]
    client.put_object(Bucket=s3.bucket, Key=key1, Body=bytes(reversed(forged)))
    assert cli("archive", "verify", env=s3.env()).returncode == 0


def test_archive_get_and_ls(cli: Cli, s3: S3Env, ff_env: dict[str, str], tmp_path: Path) -> None:
    runs = _archive_three(s3, ff_env)
    out = tmp_path / "copy.log"
    rid = str(runs[0].id)
    res = cli("archive", "get", rid, "-o", str(out), env=s3.env())
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == runs[0].log_bytes
    res = cli("archive", "get", rid, env=s3.env())
    assert res.stdout.encode() == runs[0].log_bytes
    listed = json.loads(cli("archive", "ls", "--json", env=s3.env()).stdout)
    assert {e["run_id"] for e in listed} == {str(r.id) for r in runs}
    assert (
        cli("archive", "get", "00000000-0000-0000-0000-000000000000", env=s3.env()).returncode == 1
    )


def test_archive_get_never_follows_a_planted_link_and_cleans_up(
    cli: Cli, s3: S3Env, ff_env: dict[str, str], tmp_path: Path
) -> None:
    runs = _archive_three(s3, ff_env)
    rid = str(runs[0].id)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "copy.log"
    (tmp_path / "copy.log.part").symlink_to(victim)  # the old predictable temp name
    res = cli("archive", "get", rid, "-o", str(out), env=s3.env())
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "precious" and out.read_bytes() == runs[0].log_bytes
    missing = cli("archive", "get", rid, "-o", str(tmp_path / "nope" / "x.log"), env=s3.env())
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    s3.proxy.fail(500)  # the download fails midway: no temp file is left
    failed = cli("archive", "get", rid, "-o", str(tmp_path / "second.log"), env=s3.env())
    s3.proxy.clear()
    assert failed.returncode == 1
    assert [
        p.name for p in tmp_path.iterdir() if p.name.endswith(".part") and not p.is_symlink()
    ] == []
