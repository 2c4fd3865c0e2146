"""The Settings page in a real headless Chromium against a real `fastflow serve` (issue
13): per-field source and "reset to environment", only changed fields saved, the S3 test
of the typed values, the cleanup panel refreshed after "Run cleanup now", "never" for a
channel that sent nothing."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.harness.ports import free_port
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import PASSWORD
from tests.web.test_ui_secrets import _in_browser, _need_chromium


@dataclass
class Server:
    url: str
    env: dict[str, str]
    headers: dict[str, str]

    def settings(self) -> dict[str, Any]:
        res = httpx.get(self.url + "/api/settings", headers=self.headers)
        assert res.status_code == 200, res.text
        data: dict[str, Any] = res.json()
        return data


@pytest.fixture
def server(ff_env: dict[str, str], s3: S3Env, make_pipeline: MakePipeline) -> Iterator[Server]:
    _need_chromium()
    make_pipeline("etl", "print('extract')\n")
    env = {**os.environ, **ff_env, **s3.env(), "LOG_RETENTION_RUNS": "5"}
    for _ in range(2):
        assert run_cli("run", "etl", env=env).returncode == 0
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    token = run_cli("token", "create", "--name", "t", "--role", "admin", env=env).stdout.strip()
    with fastflow_serve(env) as url:
        yield Server(url, env, {"Authorization": f"Bearer {token}"})


def _source(page: Any, name: str) -> Any:
    return page.locator(f'small[data-source-for="{name}"]')


def test_sources_reset_and_only_changed_fields_saved(server: Server) -> None:
    def body(page: Any) -> None:
        page.goto(server.url + "/settings")
        expect(_source(page, "log_retention_runs")).to_contain_text("from the environment")
        expect(_source(page, "s3_bucket")).to_contain_text("from the environment")
        expect(_source(page, "log_retention_days")).to_contain_text("default")
        expect(_source(page, "smtp_password")).to_contain_text("default")
        expect(page.locator("#email-result")).to_have_text("Last delivery: never")
        expect(page.locator("#teams-result")).to_have_text("Last delivery: never")
        expect(page.locator("button.reset-field")).to_have_count(0)
        page.fill("input[name=log_retention_days]", "30")
        page.click("#settings-save")
        expect(page.locator("#settings-result")).to_have_text("Saved.")
        expect(_source(page, "log_retention_days")).to_contain_text("set here")
        expect(_source(page, "log_retention_runs")).to_contain_text("from the environment")
        # only the changed field became an override
        view = server.settings()
        assert view["overridden"] == ["log_retention_days"]
        assert view["log_retention_days"] == 30
        # still there after a reload; then reset to the environment
        page.reload()
        reset = _source(page, "log_retention_days").locator("button.reset-field")
        expect(reset).to_have_count(1)
        reset.click()
        expect(_source(page, "log_retention_days")).to_contain_text("default")
        expect(page.locator("input[name=log_retention_days]")).to_have_value("")
        expect(page.locator("#settings-result")).to_contain_text("reset to the environment")
        assert server.settings()["overridden"] == []
        # saving with nothing changed stores nothing
        page.click("#settings-save")
        expect(page.locator("#settings-result")).to_have_text("Nothing changed.")
        assert server.settings()["overridden"] == []

    _in_browser(server.url, body)


def test_s3_test_uses_typed_values_and_cleanup_refreshes_the_panel(
    server: Server, s3: S3Env
) -> None:
    httpx.put(
        server.url + "/api/settings", json={"log_retention_runs": 1}, headers=server.headers
    ).raise_for_status()

    def body(page: Any) -> None:
        page.goto(server.url + "/settings")
        result = page.locator("#s3-test-result")
        page.fill("input[name=s3_endpoint_url]", f"http://127.0.0.1:{free_port()}")
        page.click("#s3-test")
        expect(result).to_contain_text("connection refused")
        assert server.settings()["s3_endpoint_url"] == s3.endpoint_url  # nothing saved
        page.fill("input[name=s3_endpoint_url]", s3.endpoint_url)
        page.click("#s3-test")
        expect(result).to_contain_text("Connection OK")
        # the cleanup panel agrees with the pass without a reload
        expect(page.locator("#last-backup")).to_have_text("never")
        page.click("#cleanup-now")
        expect(page.locator("#cleanup-result")).to_contain_text("1 archived")
        expect(page.locator("#last-backup")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:"))
        expect(page.locator("#failure-count")).to_have_text("0")
        expect(page.locator("#failure-list li")).to_have_text(["None. Backups are fine."])
        first = page.locator("#passes-table tbody tr").first
        expect(first.locator("td").nth(1)).to_have_text("api")
        expect(first.locator("td").nth(2)).to_have_text("1")

    _in_browser(server.url, body)
