"""``fastflow archive rebuild-index`` against the real S3 test server: after the database
is lost, the ledger comes back from the manifests, and every archived log reads back
byte-identical by run id (CLI and API); into a partial database it adds what is missing
and overwrites nothing newer; a second run changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, ArchiveManifest, utcnow
from fastflow.lifecycle.cleanup import run_pass
from fastflow.server import create_app
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, Seeded, keys, object_bytes, seed_run, seed_series

Cli = Callable[..., CompletedProcess[str]]


def _ctx(s3: S3Env, **extra: Any) -> Context:
    values: dict[str, Any] = {k.lower(): v for k, v in s3.env().items()}
    return bootstrap(load_settings(**{**values, "log_retention_runs": 1, **extra}))


def _archive_in_three_passes(ctx: Context) -> list[Seeded]:
    """Three passes archive six runs (two each); returns the archived runs."""
    runs = seed_series(ctx, "etl", 3)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 2
    for hours in (12, 6):
        runs += [seed_run(ctx, "etl", NOW - timedelta(hours=hours, minutes=-m)) for m in (0, 1)]
        assert run_pass(ctx, "test", now=NOW).archived_runs == 2
    return runs[:-1]  # the newest is kept locally


def _lose_database(ctx: Context, ff_env: dict[str, str]) -> None:
    ctx.db.dispose()
    db = Path(ff_env["DATABASE_URL"].removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _logs(run_id: str, env: dict[str, str]) -> bytes:
    """``fastflow logs RUN_ID`` as bytes."""
    res = subprocess.run(
        [sys.executable, "-m", "fastflow", "logs", run_id],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def _ledger(ctx: Context) -> dict[str, ArchivedRun]:
    with ctx.db.session() as s:
        return {str(e.run_id): e for e in s.scalars(select(ArchivedRun))}


def test_a_lost_database_gets_every_archived_log_back_by_run_id(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    env = {**s3.env(), "S3_COMPRESSION": "gzip"}
    ctx = _ctx(s3, s3_compression="gzip")
    archived = _archive_in_three_passes(ctx)
    before = _ledger(ctx)
    assert len(before) == 6
    _lose_database(ctx, ff_env)

    missing = cli("logs", str(archived[0].id), env=env)
    assert missing.returncode != 0  # nothing knows the run any more
    res = cli("archive", "rebuild-index", "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["manifests"] == 3 and report["manifests_recorded"] == 3
    assert report["objects"] == 12 and report["entries_created"] == 6

    for run in archived:
        data = _logs(str(run.id), env)
        assert hashlib.sha256(data).hexdigest() == run.sha
    ctx = bootstrap(load_settings(**{k.lower(): v for k, v in env.items()}))
    try:
        after = _ledger(ctx)
        assert set(after) == set(before)
        for rid, entry in after.items():
            old = before[rid]
            for col in ("log_key", "log_sha256", "metrics_key", "metrics_size", "encoding"):
                assert getattr(entry, col) == getattr(old, col), col
            assert (entry.status, entry.pipeline_name, entry.started_at) == (
                old.status,
                old.pipeline_name,
                old.started_at,
            )
            assert entry.manifest_key == old.manifest_key
            assert entry.local_deleted_at is not None  # the local files are gone
        client = TestClient(create_app(ctx, schedule=False))
        viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}
        run = archived[3]
        api = client.get(f"/api/runs/{run.id}/logs", headers=viewer)
        assert api.status_code == 200 and api.content == run.log_bytes
        listed = client.get("/api/runs?include_archived=true", headers=viewer).json()
        assert {str(r.id) for r in archived} <= {r["id"] for r in listed}
    finally:
        ctx.db.dispose()

    again = json.loads(cli("archive", "rebuild-index", "--json", env=env).stdout)
    assert again["entries_created"] == again["entries_updated"] == 0
    assert again["entries_unchanged"] == 6 and again["manifests_recorded"] == 0
    verified = cli("archive", "verify", "--manifests", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_partial_database_gains_what_is_missing_and_keeps_newer_entries(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3)
    archived = _archive_in_three_passes(ctx)
    gone, newer = str(archived[0].id), archived[1].id
    with ctx.db.session() as s:
        s.execute(delete(ArchivedRun).where(ArchivedRun.run_id == archived[0].id))
        s.execute(delete(ArchiveManifest))
        s.execute(
            update(ArchivedRun)
            .where(ArchivedRun.run_id == newer)
            # archived again after its manifest (not listed in one yet), as a pass leaves it
            .values(status="FAILED", archived_at=utcnow() + timedelta(days=30), manifest_key=None)
        )
    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["entries_created"] == 1 and report["manifests_recorded"] == 3
    ledger = _ledger(ctx)
    assert gone in ledger and ledger[gone].log_sha256 == archived[0].sha
    assert ledger[str(newer)].status == "FAILED"  # the newer entry was not overwritten
    assert cli("archive", "verify", "--manifests", env=s3.env()).returncode == 0
    ctx.db.dispose()


def test_only_manifest_keys_count_as_manifests(s3: S3Env, ff_env: dict[str, str], cli: Cli) -> None:
    """Objects under ``_manifests/`` that are not ``YYYY/MM/DD/<name>.jsonl`` — a run's
    files of a pipeline once named ``_manifests`` (an outside audit) — are neither read
    as manifests by rebuild-index nor named as unrecorded ones by verify --manifests."""
    ctx = _ctx(s3)
    _archive_in_three_passes(ctx)
    stray = f"pipeline-logs/_manifests/{uuid.uuid4()}/metrics.jsonl"
    s3.client().put_object(Bucket=s3.bucket, Key=stray, Body=b'{"t": 1}\n')
    verified = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    assert verified.returncode == 0 and json.loads(verified.stdout)["notes"] == []
    _lose_database(ctx, ff_env)
    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"] and report["manifests"] == 3, report


def test_the_chain_continues_across_a_lost_database(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    ctx = _ctx(s3)
    _archive_in_three_passes(ctx)
    with ctx.db.session() as s:
        last = s.scalars(
            select(ArchiveManifest).order_by(ArchiveManifest.created_at.desc())
        ).first()
        assert last is not None
        tail_sha = last.sha256
    _lose_database(ctx, ff_env)
    ctx = _ctx(s3)  # a new, empty database: the next manifest links to the bucket's newest
    seed_series(ctx, "later", 2)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 1
    manifests = [k for k in keys(s3.client(), s3.bucket, manifests=True) if "/_manifests/" in k]
    assert len(manifests) == 4
    with ctx.db.session() as s:
        (row,) = s.scalars(select(ArchiveManifest)).all()
    chain = json.loads(object_bytes(s3.client(), s3.bucket, row.key).splitlines()[-1])
    assert chain == {"previous": tail_sha, "count": 2} and row.previous_sha256 == tail_sha
    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"], report
    assert report["entries_created"] == 6 and report["manifests_recorded"] == 3
    verified = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["manifests_checked"] == 4
    ctx.db.dispose()


def test_a_damaged_manifest_is_not_trusted_and_its_original_restores_the_entries(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    """A manifest whose bytes differ from the SHA-256 it was stored with (here: a forged
    pipeline name, status and archived_at far in the future) is reported and not indexed;
    ``--include-damaged`` indexes it as it reads, ``verify --manifests`` keeps reporting
    it, and once the original is back, rebuild-index gives its entries the original's
    values again (the forged ``archived_at`` does not make them "newer")."""
    ctx = _ctx(s3)
    archived = _archive_in_three_passes(ctx)
    before = _ledger(ctx)
    _lose_database(ctx, ff_env)
    first = sorted(k for k in keys(s3.client(), s3.bucket, manifests=True) if "/_manifests/" in k)[
        0
    ]
    client = s3.client()
    original = object_bytes(client, s3.bucket, first)
    head = client.head_object(Bucket=s3.bucket, Key=first)
    forged = (
        original.replace(b'"etl"', b'"ETL"')
        .replace(b'"SUCCESS"', b'"FAILED"')
        .replace(b'"archived_at":"2', b'"archived_at":"3')
    )
    assert forged.count(b'"archived_at":"3') == original.count(b'"archived_at":"2') > 0
    client.put_object(Bucket=s3.bucket, Key=first, Body=forged, Metadata=head["Metadata"])

    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    assert res.returncode == 1 and "Traceback" not in res.stderr
    report = json.loads(res.stdout)
    assert report["manifests_withheld"] == 1 and report["entries_created"] == 4
    (problem,) = report["problems"]
    assert first in problem and "stored with" in problem
    assert "none of its objects was indexed" in problem
    ctx = _ctx(s3)
    ledger = _ledger(ctx)
    first_runs = {str(r.id) for r in archived[:2]}  # the first pass's two runs
    assert not first_runs & set(ledger) and len(ledger) == 4
    assert all(e.pipeline_name == "etl" for e in ledger.values())
    # the next pass links to the original, not to the forged bytes
    with ctx.db.session() as s:
        recorded = s.scalar(select(ArchiveManifest.sha256).where(ArchiveManifest.key == first))
    assert recorded == hashlib.sha256(original).hexdigest()
    assert cli("logs", str(archived[0].id), env=s3.env()).returncode != 0

    res = cli("archive", "rebuild-index", "--include-damaged", env=s3.env())
    assert res.returncode == 1 and first in res.stdout
    assert "but this database recorded it with" in res.stdout
    assert "2 entries created" in res.stderr
    forged_entries = {rid: e for rid, e in _ledger(ctx).items() if rid in first_runs}
    assert {e.pipeline_name for e in forged_entries.values()} == {"ETL"}
    verified = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    assert verified.returncode == 1 and first in verified.stdout

    client.put_object(Bucket=s3.bucket, Key=first, Body=original, Metadata=head["Metadata"])
    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    report = json.loads(res.stdout)  # the entries disagree with their manifest: reported
    assert res.returncode == 1 and report["entries_conflicting"] == 2, report
    assert report["entries_updated"] == 0 and report["manifests_withheld"] == 0
    assert all("--replace-conflicting" in p for p in report["problems"])
    assert {e.pipeline_name for rid, e in _ledger(ctx).items() if rid in first_runs} == {"ETL"}
    res = cli("archive", "rebuild-index", "--replace-conflicting", "--json", env=s3.env())
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"], report
    assert report["entries_updated"] == 2 and report["entries_created"] == 0
    restored = _ledger(ctx)
    for rid in first_runs:
        old, entry = before[rid], restored[rid]
        for col in ("pipeline_name", "status", "archived_at", "log_sha256", "manifest_key"):
            assert getattr(entry, col) == getattr(old, col), col
    again = json.loads(cli("archive", "rebuild-index", "--json", env=s3.env()).stdout)
    assert again["entries_updated"] == 0 and again["entries_unchanged"] == 6
    assert cli("archive", "verify", "--manifests", env=s3.env()).returncode == 0
    ctx.db.dispose()


def test_progress_is_shown_on_a_terminal(s3: S3Env, ff_env: dict[str, str]) -> None:
    ctx = _ctx(s3)
    _archive_in_three_passes(ctx)
    _lose_database(ctx, ff_env)
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "archive", "rebuild-index"],
        env={**os.environ, **s3.env()},
        stdout=subprocess.PIPE,
        stderr=sub,
    )
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(main)
    assert b"rebuild-index: " in seen and b"manifests" in seen and b"\r\x1b[K" in seen
    assert b"6 entries created" in seen


def test_while_logs_dir_is_away_rebuilt_entries_stay_pending(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    """Found by an outside audit: with the logs' volume unmounted, every rebuilt entry
    counted as deleted locally (its files looked gone), so the logs on the volume would
    never be settled by a pass. The entries now stay pending, and the report says why."""
    ctx = _ctx(s3)
    _archive_in_three_passes(ctx)
    with ctx.db.session() as s:
        s.execute(delete(ArchivedRun))
        s.execute(delete(ArchiveManifest))
    root = ctx.settings.logs_root
    root.rename(root.with_name("logs.volume"))
    root.mkdir()

    res = cli("archive", "rebuild-index", "--json", env=s3.env())

    report = json.loads(res.stdout)
    assert report["entries_created"] == 6 and not report["ok"] and res.returncode != 0
    assert any(".fastflow-logs-dir" in p for p in report["problems"])
    assert all(e.local_deleted_at is None for e in _ledger(ctx).values())
    ctx.db.dispose()


def test_a_forged_newer_manifest_does_not_rewrite_an_intact_ledger(
    s3: S3Env, ff_env: dict[str, str], cli: Cli
) -> None:
    """An outside audit's finding: a manifest appended to the bucket, correctly chained
    and with matching metadata, re-listing an archived run with another SHA-256 and a
    future ``archived_at``, passed ``verify --manifests`` and replaced the ledger's
    SHA-256 in rebuild-index. Now both report it, and the ledger keeps its record."""
    ctx = _ctx(s3)
    archived = _archive_in_three_passes(ctx)
    before = _ledger(ctx)
    client = s3.client()
    names = sorted(k for k in keys(client, s3.bucket, manifests=True) if "/_manifests/" in k)
    with ctx.db.session() as s:
        last = s.scalars(
            select(ArchiveManifest).order_by(ArchiveManifest.created_at.desc())
        ).first()
        assert last is not None
    victim = str(archived[0].id)
    line = next(
        json.loads(raw)
        for name in names
        for raw in object_bytes(client, s3.bucket, name).splitlines()
        if victim.encode() in raw and b'"file":"log"' in raw
    )
    line.update(sha256="f" * 64, archived_at="2099-01-01T00:00:00+00:00")
    body = (
        json.dumps(line).encode()
        + b"\n"
        + json.dumps({"previous": last.sha256, "count": 1}).encode()
        + b"\n"
    )
    forged = names[0].rsplit("/", 1)[0] + "/999.jsonl"
    client.put_object(
        Bucket=s3.bucket,
        Key=forged,
        Body=body,
        Metadata={"sha256": hashlib.sha256(body).hexdigest()},
    )

    verified = cli("archive", "verify", "--manifests", "--json", env=s3.env())
    assert verified.returncode == 1, verified.stdout
    problems = json.loads(verified.stdout)["problems"]
    assert [(p["state"], p["manifest"], p["run_id"]) for p in problems] == [
        ("mismatch", forged, victim)
    ]
    res = cli("archive", "rebuild-index", "--json", env=s3.env())
    report = json.loads(res.stdout)
    assert res.returncode == 1 and report["entries_conflicting"] == 1, report
    assert report["entries_updated"] == 0 and report["entries_created"] == 0
    after = _ledger(ctx)
    assert after[victim].log_sha256 == before[victim].log_sha256 == archived[0].sha
    ctx.db.dispose()
