"""``fastflow cleanup``'s one-line summary names every kind of work the pass did."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fastflow.config import load_settings
from fastflow.context import bootstrap
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import seed_run


def test_the_summary_says_how_many_truncated_logs_were_archived_whole_first(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside audit: the line said "1 logs truncated" but not that the whole log
    had been archived (and verified) first, which ``--json`` and the API report."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOG_MAX_SIZE_MB", "1")
    ctx = bootstrap(load_settings())
    try:
        seed_run(ctx, "etl", datetime.now(UTC) - timedelta(hours=1), log=b"log text\n" * 200_000)
    finally:
        ctx.db.dispose()
    res = run_cli("cleanup")
    assert res.returncode == 0, res.stderr
    assert "1 logs truncated (1 archived whole first)," in res.stderr, res.stderr
