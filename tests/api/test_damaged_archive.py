"""An archived log damaged or replaced after it was verified is never served as a complete
log (found by an outside audit): a truncated compressed object was served as the whole
log (exit 0, 200), a corrupt one crashed `fastflow logs` and `fastflow search` with a
traceback and answered 500 or a 200 that broke off. Reads now stop with
``ArchiveDamaged`` (502 before the answer starts, an ``error`` line in NDJSON, a broken-off
transfer later, exit 1 with one line in the CLI), and a search goes on with other runs.
Resuming at the end of an uncompressed archived log no longer asks S3 for an empty range
(416)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.archive import ledger
from fastflow.context import Context
from fastflow.errors import ArchiveDamaged
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import readback
from fastflow.server import create_app
from tests.conftest import run_cli, tune
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, run_row, seed_run

LOG = b"".join(f"[2026-01-01 00:00:00.000] step {i} of the job\n".encode() for i in range(4000))


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 3]


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def _append(data: bytes) -> bytes:
    return data + b"trailing bytes after the archived object's end\n"


def archived_run(ctx: Context, codec: str, log: bytes = LOG) -> uuid.UUID:
    """A run of ``etl`` with ``log``, archived with ``codec`` and deleted locally by
    retention."""
    ctx = tune(ctx, s3_compression=codec)
    old = seed_run(ctx, "etl", NOW - timedelta(days=2), log=log)
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    run_pass(tune(ctx, log_retention_runs=1), "test", now=NOW)
    assert run_row(ctx, old.id) is None and not old.log.exists()
    return old.id


def _tamper(ctx: Context, s3: S3Env, run_id: uuid.UUID, change: Callable[[bytes], bytes]) -> None:
    """Replace the archived log's bytes, keeping its metadata (what a careless restore or
    a bucket-side edit does)."""
    entry = ledger.get(ctx.db, run_id)
    assert entry is not None and entry.log_key is not None
    client = s3.client()
    head = client.head_object(Bucket=s3.bucket, Key=entry.log_key)
    body = client.get_object(Bucket=s3.bucket, Key=entry.log_key)["Body"].read()
    client.put_object(
        Bucket=s3.bucket, Key=entry.log_key, Body=change(body), Metadata=head["Metadata"]
    )


def _viewer(ctx: Context) -> dict[str, str]:
    return {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'viewer', 'viewer')}"}


CASES = [
    ("gzip", _truncate),
    ("gzip", _corrupt),
    ("gzip", _append),
    ("zstd", _truncate),
    ("zstd", _corrupt),
    ("zstd", _append),
    ("none", _truncate),
    ("none", _append),
]


@pytest.mark.parametrize(
    ("codec", "change"), CASES, ids=[f"{c}-{f.__name__[1:]}" for c, f in CASES]
)
def test_a_damaged_archived_log_is_never_served_as_complete(
    s3_app: Context,
    s3: S3Env,
    codec: str,
    change: Callable[[bytes], bytes],
    tmp_path: Path,
) -> None:
    run_id = archived_run(s3_app, codec)
    source = readback.open_log(s3_app, run_id, None)
    assert b"".join(source.chunks) == LOG  # intact: read back whole
    _tamper(s3_app, s3, run_id, change)

    with pytest.raises(ArchiveDamaged) as raised:
        b"".join(readback.open_log(s3_app, run_id, None).chunks)
    assert "fastflow archive verify --deep" in str(raised.value)

    http = TestClient(create_app(s3_app, schedule=False))
    viewer = _viewer(s3_app)
    tail = http.get(f"/api/runs/{run_id}/logs?tail_bytes=4096", headers=viewer)
    assert tail.status_code == 502, tail.text
    assert "cannot be read as archived" in tail.json()["detail"]
    grep = http.get(f"/api/runs/{run_id}/logs?grep=step 3999", headers=viewer)
    lines = [json.loads(line) for line in grep.text.splitlines()] if grep.status_code == 200 else []
    if grep.status_code == 200:  # the error came after the answer started: its last line
        assert "cannot be read as archived" in lines[-1]["error"]
    else:
        assert grep.status_code == 502 and "cannot be read as archived" in grep.json()["detail"]

    cli = run_cli("logs", str(run_id))
    assert cli.returncode == 1
    assert "cannot be read as archived" in cli.stderr and "Traceback" not in cli.stderr
    folder = tmp_path / "download"
    folder.mkdir()
    out = folder / "out.log"
    got = run_cli("archive", "get", str(run_id), "-o", str(out))
    assert got.returncode == 1 and "cannot be read as archived" in got.stderr
    assert "Traceback" not in got.stderr
    assert list(folder.iterdir()) == []  # neither the file nor a partial one


@pytest.mark.parametrize("codec", ["gzip", "none"])
def test_an_archived_log_deleted_from_the_bucket_reads_as_damaged(
    s3_app: Context, s3: S3Env, codec: str
) -> None:
    """An outside audit: an object deleted from the bucket after it was verified read back
    as the raw ``S3 request failed: NoSuchKey (HTTP 404)``, without the hint to check the
    whole archive."""
    run_id = archived_run(s3_app, codec)
    entry = ledger.get(s3_app.db, run_id)
    assert entry is not None and entry.log_key is not None
    s3.client().delete_object(Bucket=s3.bucket, Key=entry.log_key)

    with pytest.raises(ArchiveDamaged) as raised:
        b"".join(readback.open_log(s3_app, run_id, None).chunks)
    assert "no longer exists in the bucket" in str(raised.value)
    assert "fastflow archive verify --deep" in str(raised.value)
    http = TestClient(create_app(s3_app, schedule=False))
    tail = http.get(f"/api/runs/{run_id}/logs?tail_bytes=4096", headers=_viewer(s3_app))
    assert tail.status_code == 502, tail.text
    assert "no longer exists in the bucket" in tail.json()["detail"]
    assert "NoSuchKey" not in tail.text
    cli = run_cli("logs", str(run_id))
    assert cli.returncode == 1
    assert "no longer exists in the bucket" in cli.stderr and "Traceback" not in cli.stderr


def test_a_damaged_object_does_not_stop_a_search_of_other_runs(s3_app: Context, s3: S3Env) -> None:
    damaged = archived_run(s3_app, "gzip")
    _tamper(s3_app, s3, damaged, _corrupt)
    intact = seed_run(s3_app, "etl", NOW, log=b"[2026-01-01 00:00:00.000] step 7 of the job\n")
    cli = run_cli("search", "step 7 of", "--json")
    assert "Traceback" not in cli.stderr
    found: list[dict[str, Any]] = [json.loads(line) for line in cli.stdout.splitlines()]
    assert any(f.get("run_id") == str(intact.id) for f in found)
    assert "cannot be read as archived" in cli.stdout + cli.stderr


def test_reading_from_the_end_of_an_uncompressed_archived_log_is_empty(
    s3_app: Context, s3: S3Env
) -> None:
    run_id = archived_run(s3_app, "none")
    size = len(LOG)
    assert b"".join(readback.open_log(s3_app, run_id, None, start=size).chunks) == b""
    assert b"".join(readback.open_log(s3_app, run_id, None, start=size + 99).chunks) == b""
    assert b"".join(readback.open_log(s3_app, run_id, None, start=size - 5).chunks) == LOG[-5:]
    http = TestClient(create_app(s3_app, schedule=False))
    viewer = _viewer(s3_app)
    empty = http.get(f"/api/runs/{run_id}/logs?tail_bytes=0", headers=viewer)
    assert empty.status_code == 200 and empty.content == b""
    with http.stream(
        "GET", f"/api/runs/{run_id}/logs/stream?offset={size}", headers=viewer
    ) as stream:
        body = "".join(stream.iter_text())
    assert "log-error" not in body and "event: status" in body


def test_an_empty_archived_log_replaced_by_bytes_is_not_served_as_empty(
    s3_app: Context, s3: S3Env
) -> None:
    """An outside audit: with the ledger recording 0 bytes, reads never looked at the
    object (nothing to read after byte 0) and served an empty log with success, whatever
    the object held."""
    run_id = archived_run(s3_app, "none", log=b"")
    assert b"".join(readback.open_log(s3_app, run_id, None).chunks) == b""  # intact
    _tamper(s3_app, s3, run_id, lambda _: b"bytes nobody archived\n")

    with pytest.raises(ArchiveDamaged, match="holds 22 bytes, not the 0 recorded"):
        readback.open_log(s3_app, run_id, None)
    http = TestClient(create_app(s3_app, schedule=False))
    res = http.get(f"/api/runs/{run_id}/logs", headers=_viewer(s3_app))
    assert res.status_code == 502 and "cannot be read as archived" in res.json()["detail"]
    cli = run_cli("logs", str(run_id))
    assert cli.returncode == 1 and "cannot be read as archived" in cli.stderr


def test_the_damage_names_the_recorded_size_of_the_whole_log(s3_app: Context, s3: S3Env) -> None:
    """A tail read of a longer object named the tail's length as "recorded" (an outside
    audit: "longer than the 50 bytes recorded" of a 235-byte log)."""
    run_id = archived_run(s3_app, "none")
    _tamper(s3_app, s3, run_id, _append)
    with pytest.raises(ArchiveDamaged, match=f"longer than the {len(LOG):,} bytes recorded"):
        b"".join(readback.open_log(s3_app, run_id, None, 50).chunks)


def test_a_transfer_broken_off_by_damage_logs_one_line_not_tracebacks(
    s3_app: Context, s3: S3Env, ff_env: dict[str, str], tmp_path: Path
) -> None:
    """An outside audit: every full read of a damaged archived log (the error comes after
    the answer started, so the transfer breaks off, as documented) wrote two tracebacks
    of ~40 lines into ``fastflow serve``'s log — any viewer could fill it. It is now one
    warning line naming the run."""
    import os

    import httpx

    from tests.conftest import wait_until
    from tests.harness.serve import fastflow_serve

    run_id = archived_run(s3_app, "gzip", LOG * 8)
    _tamper(s3_app, s3, run_id, _corrupt)
    viewer = _viewer(s3_app)
    log = tmp_path / "serve.log"
    with (
        open(log, "wb") as err,
        fastflow_serve({**os.environ, **ff_env, **s3.env()}, stderr=err, stdout=err) as url,
    ):
        for _ in range(2):
            with pytest.raises(httpx.HTTPError):  # broken off: never a complete-looking log
                httpx.get(f"{url}/api/runs/{run_id}/logs", headers=viewer, timeout=30)
        wait_until(lambda: log.read_bytes().count(b"broke off") >= 2, 30, "the log lines")
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    assert f"run {run_id}" in text and "cannot be read as archived" in text
