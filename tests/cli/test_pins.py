"""``fastflow runs pin RUN_ID --reason TEXT`` / ``fastflow runs unpin RUN_ID`` (issue 16),
through the real command in a subprocess; ``fastflow runs`` keeps listing runs."""

from __future__ import annotations

import getpass
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle.cleanup import run_pass
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, ledger, run_row, seed_run


@pytest.fixture
def ctx(ff_env: dict[str, str]) -> Iterator[Context]:
    app = bootstrap(load_settings())
    yield app
    app.db.dispose()


def test_runs_still_lists_and_pin_unpin_record_who_when_why(ctx: Context) -> None:
    run = seed_run(ctx, "etl", NOW - timedelta(days=2))

    listed = run_cli("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [str(run.id)]

    res = run_cli("runs", "pin", str(run.id)[:8], "--reason", "kept for the audit")

    assert res.returncode == 0, res.stderr
    who = f"cli:{getpass.getuser()}"
    assert res.stderr.strip() == f"run {run.id} pinned by {who}: kept for the audit"
    row = run_row(ctx, run.id)
    assert row is not None and row.pinned_at is not None
    assert (row.pinned_by, row.pin_reason) == (who, "kept for the audit")
    shown = json.loads(run_cli("runs", "--include-archived", "--json").stdout)
    assert (shown[0]["pinned_by"], shown[0]["pin_reason"]) == (who, "kept for the audit")

    off = run_cli("runs", "unpin", str(run.id))
    assert off.returncode == 0 and off.stderr.strip() == f"run {run.id} unpinned"
    row = run_row(ctx, run.id)
    assert row is not None and (row.pinned_at, row.pinned_by, row.pin_reason) == (None,) * 3
    again = run_cli("runs", "unpin", str(run.id))
    assert again.returncode == 0 and again.stderr.strip() == f"run {run.id} was not pinned"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--reason", "   "], 2, "a pin needs a reason"),
        ([], 2, "Missing option '--reason'"),
    ],
)
def test_a_pin_needs_a_reason(ctx: Context, args: list[str], code: int, message: str) -> None:
    run = seed_run(ctx, "etl", NOW - timedelta(days=2))

    res = run_cli("runs", "pin", str(run.id), *args)

    assert res.returncode == code and message in res.stderr
    row = run_row(ctx, run.id)
    assert row is not None and row.pinned_at is None


def test_unknown_runs_are_one_line_errors(ctx: Context) -> None:
    missing = uuid.uuid4()

    for args in (["pin", str(missing), "--reason", "x"], ["unpin", str(missing)]):
        res = run_cli("runs", *args)
        assert res.returncode == 1
        assert res.stderr.strip() == f"fastflow: run {missing} not found"


def test_an_archived_run_removed_by_retention_is_pinned_on_its_ledger_entry(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3ctx = bootstrap(load_settings(log_retention_runs=1))
    old = seed_run(s3ctx, "etl", NOW - timedelta(days=3))
    seed_run(s3ctx, "etl", NOW - timedelta(days=1))
    assert run_pass(s3ctx, "test", now=NOW).deleted_runs == 1

    res = run_cli("runs", "pin", str(old.id), "--reason", "legal request 7")

    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith(f"run {old.id} pinned by cli:")
    assert res.stderr.rstrip().endswith(": legal request 7")
    entry = ledger(s3ctx)[old.id]
    assert entry.pinned_at is not None and entry.pin_reason == "legal request 7"
    assert str(entry.pinned_by).startswith("cli:")

    res = run_cli("runs", "unpin", str(old.id))

    assert (res.returncode, res.stderr.strip()) == (0, f"run {old.id} unpinned")
    assert ledger(s3ctx)[old.id].pinned_at is None
    s3ctx.db.dispose()


def test_a_failed_legal_hold_exits_1_and_the_pin_stands(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_OBJECT_LOCK_LEGAL_HOLD", "true")  # but the bucket has no lock
    s3ctx = bootstrap(load_settings(log_max_size_mb=1))
    big = seed_run(s3ctx, "etl", NOW - timedelta(hours=1), log=b"some log text\n" * 100_000)
    assert run_pass(s3ctx, "test", now=NOW).archived_before_truncation == 1
    assert big.id in ledger(s3ctx)

    res = run_cli("runs", "pin", str(big.id), "--reason", "audit")

    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(f"run {big.id} pinned by cli:")
    assert lines[1] == (
        "fastflow: legal hold not placed: bucket 'fastflow-test' has no Object Lock "
        "configuration: legal holds need a bucket created with Object Lock enabled"
    )
    row = run_row(s3ctx, big.id)
    assert row is not None and row.pin_reason == "audit"
    s3ctx.db.dispose()
