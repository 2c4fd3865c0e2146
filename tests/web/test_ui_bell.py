"""The bell in a real headless Chromium against a real `fastflow serve` and a real S3
server behind the fault proxy: it counts incidents (one per failing run), not one entry
per run per pass; reading them holds across later failing passes; when the backups work
again a "backups OK again" toast says so and the bell empties."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.db.models import utcnow
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve
from tests.seeding import seed_run
from tests.web.test_ui import PASSWORD, Server
from tests.web.test_ui_run_chart import admin_token, api, browse, shot

RUNS = {"etl-a": 3, "etl-b": 2}  # five finished runs, ten days old: all due for archiving


@pytest.fixture
def server(ff_env: dict[str, str], s3: S3Env) -> Iterator[Server]:
    ctx = bootstrap(load_settings())
    try:
        for pipeline, n in RUNS.items():
            for i in range(n):
                seed_run(ctx, pipeline, utcnow() - timedelta(days=10, minutes=i))
    finally:
        ctx.db.dispose()
    env = {
        **os.environ,
        **ff_env,
        **s3.env(),
        "LOG_RETENTION_DAYS": "1",
        "LOG_RETENTION_KEEP_LAST_SUCCESS": "false",  # every one of the five is due
        "S3_CONNECT_TIMEOUT": "1",
        "S3_READ_TIMEOUT": "2",
        "S3_MAX_CONCURRENCY": "1",  # one upload at a time: the circuit opens after three
    }
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    with fastflow_serve(env) as url:
        yield Server(url, env)


def _cleanup_pass(server: Server) -> dict[str, Any]:
    res = api(server, "POST", "/api/settings/cleanup/force")
    res.raise_for_status()
    summary: dict[str, Any] = res.json()
    return summary


def _unresolved(server: Server) -> list[dict[str, Any]]:
    res = api(server, "GET", "/api/settings/backup-failures", params={"limit": 1000})
    res.raise_for_status()
    return [f for f in res.json()["failures"] if not f["resolved_at"]]


def test_the_bell_counts_failing_runs_and_says_when_backups_recover(
    server: Server, s3: S3Env
) -> None:
    def body(page: Any, server: Server) -> None:
        badge = page.locator("#bell-badge")
        items = page.locator("#notif-list li[data-kind=backup]")
        polled = page.locator("#notif-list[data-polls]")  # the page asked the API once
        expect(polled).to_have_count(1)
        expect(page.locator("#notif-list li.empty")).to_have_count(1)
        expect(badge).to_be_hidden()

        s3.proxy.fail(403)  # every request refused: all five runs fail
        assert _cleanup_pass(server)["backup_failures"] == 5
        s3.proxy.clear()
        s3.proxy.stop()  # connection refused: the circuit opens after three runs, and
        for _ in range(2):  # the runs not tried keep their failures of the last pass
            assert _cleanup_pass(server)["backup_failures"] == 3
        rows = _unresolved(server)
        assert len(rows) == 11 and len({r["run_id"] for r in rows}) == 5  # one row a pass

        page.reload()
        expect(badge).to_have_text("5")  # runs, not 11 rows
        expect(page.locator(".toast.error")).to_contain_text("S3 log backup failed for 5 runs")
        page.click("#bell")
        expect(items).to_have_count(5)
        expect(items.filter(has_text="(failed in 3 passes)")).to_have_count(3)
        expect(items.filter(has_text="connection refused")).to_have_count(3)  # the newest
        expect(items.filter(has_text="AccessDenied")).to_have_count(2)
        shot(page, "bell-incidents")
        page.click("#notif-read-all")
        expect(badge).to_be_hidden()

        assert _cleanup_pass(server)["backup_failures"] == 3  # still failing: nothing new
        page.reload()
        expect(polled).to_have_count(1)
        expect(items).to_have_count(5)
        expect(badge).to_be_hidden()
        expect(page.locator(".toast")).to_have_count(0)

        s3.proxy.start()  # the S3 server answers again
        summary = _cleanup_pass(server)
        assert summary["backup_failures"] == 0 and summary["archived_runs"] == 5
        assert _unresolved(server) == []
        page.reload()
        recovered = page.locator(".toast.ok")
        expect(recovered).to_contain_text("S3 log backups OK again: 5 failed backups resolved")
        expect(page.locator(".toast.error")).to_have_count(0)
        expect(badge).to_be_hidden()
        expect(items).to_have_count(0)
        expect(page.locator("#notif-list li.empty")).to_have_count(1)
        shot(page, "bell-recovered")
        page.reload()  # said once
        expect(polled).to_have_count(1)
        expect(page.locator("#notif-list li.empty")).to_have_count(1)
        expect(page.locator(".toast")).to_have_count(0)

    browse(server, body)
