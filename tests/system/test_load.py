"""Concurrent clients polling the API while a cleanup pass archives runs: no errors, and
the pass is unaffected. (The full-size figures come from bench/load.py.)"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import httpx
import pytest

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import bootstrap
from tests.harness.fixtures import S3Env
from tests.harness.loadgen import hammer, seed_finished_runs
from tests.harness.serve import fastflow_serve

PATHS = ["/api/settings/backup-failures", "/api/runs?limit=50"]


@pytest.mark.slow
def test_polling_clients_during_a_pass(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, **ff_env, **s3.env(), "LOG_RETENTION_RUNS": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    seed_finished_runs(ctx, 200, datetime.now(UTC))
    token = accounts.create_token(ctx.db, "load", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    with fastflow_serve(env) as base:
        result: list[httpx.Response] = []
        cleaner = threading.Thread(
            target=lambda: result.append(
                httpx.post(base + "/api/settings/cleanup/force", headers=headers, timeout=300)
            )
        )
        cleaner.start()
        stats = hammer(base, headers, PATHS, clients=20, seconds=5)
        cleaner.join(300)
    assert stats.errors == []
    assert len(stats.latencies) > 100
    summary = result[0].json()
    assert result[0].status_code == 200
    assert summary["archived_runs"] == 196 and summary["backup_failures"] == 0
