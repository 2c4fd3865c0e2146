"""Fault matrix, part 2: faults on the local side (the network faults are in
test_cleanup.py). For each: nothing lost, a clear failure, the next pass recovers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle.cleanup import run_pass
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, failures, keys, ledger, run_row, seed_series


@pytest.fixture
def s3_app(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def _chattr(flag: str, path: Path) -> None:
    res = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"chattr {flag} failed (needs root with CAP_LINUX_IMMUTABLE): {res.stderr}")
        pytest.skip(f"chattr {flag} not permitted here: {res.stderr.strip()}")


def test_permission_denied_on_delete_keeps_files_and_next_pass_finishes(
    s3_app: Context, s3: S3Env
) -> None:
    old, new = seed_series(s3_app, "p", 2)
    _chattr("+i", old.log)  # even root cannot delete an immutable file
    try:
        summary = run_pass(s3_app, "test", now=NOW)
        assert summary.archived_runs == 1 and summary.deleted_runs == 0
        assert summary.backup_failures == 1
        assert old.log.read_bytes() == old.log_bytes and run_row(s3_app, old.id) is not None
        (failure,) = failures(s3_app)
        assert "Operation not permitted" in failure.error_message
        entry = ledger(s3_app)[old.id]
        assert entry.local_deleted_at is None  # archived, verified, not yet deleted
    finally:
        _chattr("-i", old.log)
    again = run_pass(s3_app, "test", now=NOW)
    assert again.deleted_runs == 1 and again.backup_failures == 0
    assert again.archived_runs == 0  # finished from the ledger, not uploaded again
    assert not old.log.exists() and run_row(s3_app, old.id) is None
    assert ledger(s3_app)[old.id].local_deleted_at is not None
    assert failures(s3_app) == []
    assert new.log.exists()
    assert len(keys(s3.client(), s3.bucket)) == 2


def test_database_locked_fails_the_pass_clearly_and_loses_nothing(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    db_file = Path(ff_env["DATA_DIR"]) / "fastflow.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db_file}?timeout=1")
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    ctx = bootstrap(load_settings())
    old, _ = seed_series(ctx, "p", 2)
    blocker = sqlite3.connect(db_file, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(Exception, match="database is locked"):
            run_pass(ctx, "test", now=NOW)
    finally:
        blocker.rollback()
        blocker.close()
    assert old.log.read_bytes() == old.log_bytes and run_row(ctx, old.id) is not None
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.archived_runs == 1 and summary.deleted_runs == 1
    assert not old.log.exists()


def test_database_locked_in_the_cli_is_one_clear_line(
    cli: object, ff_env: dict[str, str], s3: S3Env
) -> None:
    db_file = Path(ff_env["DATA_DIR"]) / "fastflow.db"
    env = {**s3.env(), "DATABASE_URL": f"sqlite:///{db_file}?timeout=1"}
    # (a command that writes: it makes the database)
    assert cli("user", "list", env=env).returncode == 0  # type: ignore[operator]
    blocker = sqlite3.connect(db_file, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        res = cli("cleanup", env=env)  # type: ignore[operator]
    finally:
        blocker.rollback()
        blocker.close()
    assert res.returncode == 1
    assert "database is locked" in res.stderr and "Traceback" not in res.stderr
