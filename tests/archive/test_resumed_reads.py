"""Archived reads survive a download that breaks off in the middle (outside fault matrix:
`fastflow logs` printed part of an archived log and then failed on one reset
connection). ``S3Store.open`` takes the object up where it stopped with a ranged GET bound
by ``If-Match`` to the same object, a few times; the bytes are exactly the object's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.archive import s3 as s3mod
from fastflow.config import load_settings
from fastflow.context import Context
from fastflow.errors import ArchiveError
from fastflow.server import create_app
from tests.api.test_damaged_archive import archived_run
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env

DATA = os.urandom(1_000_000)


def _store(s3: S3Env, tmp_path: Path) -> s3mod.S3Store:
    env = {k.lower(): v for k, v in s3.env().items()}
    return s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "data"))


def _gets(s3: S3Env) -> int:
    return sum(1 for r in s3.proxy.requests if r.method == "GET")


def _put(s3: S3Env, key: str, data: bytes = DATA) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)


def _is_get(method: str, _path: str) -> bool:
    return method == "GET"


@pytest.mark.parametrize("start", [0, 123_457])
def test_a_download_cut_off_midway_is_taken_up_where_it_stopped(
    s3: S3Env, tmp_path: Path, start: int
) -> None:
    store = _store(s3, tmp_path)
    _put(s3, "cut/obj")
    s3.proxy.clear_requests()
    s3.proxy.cut_response(300_000, times=1, match=_is_get)
    assert b"".join(store.open("cut/obj", start)) == DATA[start:]
    assert _gets(s3) == 2


def test_a_download_that_keeps_breaking_fails_plainly_after_a_few_tries(
    s3: S3Env, tmp_path: Path
) -> None:
    store = _store(s3, tmp_path)
    _put(s3, "cut/always")
    s3.proxy.clear_requests()
    s3.proxy.cut_response(100_000, match=_is_get)
    with pytest.raises(ArchiveError) as err:
        b"".join(store.open("cut/always"))
    assert str(err.value) == f"connection to {s3.proxy.url} broke while an object was read"
    assert err.value.connection_level
    assert _gets(s3) == 1 + s3mod.READ_RESUMES


def test_an_object_replaced_while_it_is_read_is_not_spliced(s3: S3Env, tmp_path: Path) -> None:
    """The rest of the download must come from the same object: another object's bytes
    after the first part would be a log nobody wrote."""
    store = _store(s3, tmp_path)
    _put(s3, "cut/replaced")
    calls = 0

    def replace_before_the_resume(**_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            _put(s3, "cut/replaced", os.urandom(len(DATA)))

    store.client.meta.events.register("before-call.s3.GetObject", replace_before_the_resume)
    s3.proxy.cut_response(300_000, times=1, match=_is_get)
    with pytest.raises(
        ArchiveError, match=r"^s3://.*/cut/replaced was replaced while it was read$"
    ):
        b"".join(store.open("cut/replaced"))


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_archived_logs_are_read_whole_through_a_connection_that_breaks_once(
    s3_app: Context, s3: S3Env, tmp_path: Path, codec: str
) -> None:
    """`fastflow logs`, `fastflow archive get -o` and the API's tail each see one
    download cut off: the output is the whole log, exit 0, 200."""
    log = b"".join(
        f"[2026-01-01 00:00:00.000] {os.urandom(24).hex()}\n".encode() for _ in range(8000)
    )
    run_id = archived_run(s3_app, codec, log)
    on_the_log = lambda method, path: method == "GET" and "/run.log" in path  # noqa: E731

    s3.proxy.cut_response(20_000, times=1, match=on_the_log)
    shown = run_cli("logs", str(run_id))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.encode() == log
    assert "resuming" not in shown.stdout

    s3.proxy.cut_response(20_000, times=1, match=on_the_log)
    out = tmp_path / "out.log"
    got = run_cli("archive", "get", str(run_id), "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == log

    s3.proxy.cut_response(10_000, times=1, match=on_the_log)
    http = TestClient(create_app(s3_app, schedule=False))
    viewer = {"Authorization": f"Bearer {accounts.create_token(s3_app.db, 'v', 'viewer')}"}
    tail = http.get(f"/api/runs/{run_id}/logs?tail_bytes=65536", headers=viewer)
    assert tail.status_code == 200, tail.text
    assert tail.content == log[-65536:]
