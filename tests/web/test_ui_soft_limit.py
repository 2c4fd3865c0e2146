"""A soft memory limit never stops a run: the run succeeds, its final metrics sample and
its log say what was exceeded, and the run page shows a warning."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import PASSWORD, Server
from tests.web.test_ui_run_chart import admin_token, api, browse


@pytest.fixture
def server(ff_env: dict[str, str], make_pipeline: MakePipeline) -> Iterator[Server]:
    make_pipeline(
        "roomy",  # 60 MiB resident for 3 s, past a 20 MiB soft limit
        "import time\nblob = b'x' * (60 * 1024 * 1024)\ntime.sleep(3)\nprint('done')\n",
        config='{"limits": {"memory_soft_mb": 20}}',
    )
    env = {**os.environ, **ff_env}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    with fastflow_serve(env) as url:
        yield Server(url, env)


def test_a_soft_limit_warns_without_stopping_the_run(server: Server) -> None:
    res = run_cli("run", "roomy", env=server.env, timeout=120)
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    samples = api(server, "GET", f"/api/runs/{run_id}/metrics").json()
    assert samples[-1]["exit"] is True
    assert samples[-1]["soft_limit_exceeded"] == ["memory"]
    log = api(server, "GET", f"/api/runs/{run_id}/logs").text
    assert "done" in log and "the soft memory limit was exceeded (the run went on)" in log
    run = api(server, "GET", f"/api/runs/{run_id}").json()
    assert run["status"] == "SUCCESS" and run["failure_reason"] is None

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run_id}")
        warning = page.locator("#soft-limit-warning")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("Soft limit exceeded: memory")

    browse(server, body)


def test_no_warning_without_a_soft_limit(server: Server, make_pipeline: MakePipeline) -> None:
    folder: Path = make_pipeline("plain", "print('ok')\n")
    assert folder.is_dir()
    res = run_cli("run", "plain", env=server.env)
    run_id = res.stdout.strip().splitlines()[-1]

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run_id}")
        expect(page.locator("#metrics-chart")).to_have_attribute("data-samples", "1")
        expect(page.locator("#soft-limit-warning")).to_be_hidden()

    browse(server, body)
