"""Pin and unpin a run from its page: the note says who, when and why."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import PASSWORD, Server
from tests.web.test_ui_run_chart import admin_token, api, browse


@pytest.fixture
def server(ff_env: dict[str, str], make_pipeline: MakePipeline) -> Iterator[Server]:
    make_pipeline("audited", "print('numbers for the auditor')\n")
    env = {**os.environ, **ff_env}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    with fastflow_serve(env) as url:
        yield Server(url, env)


def test_pin_and_unpin_from_the_run_page(server: Server) -> None:
    res = run_cli("run", "audited", env=server.env)
    run_id = res.stdout.strip().splitlines()[-1]

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run_id}")
        expect(page.locator("#pin-note")).to_have_count(0)
        page.click("#pin-run")  # no reason yet: refused in the page
        expect(page.locator("#pin-result")).to_contain_text("Say why")
        page.fill("#pin-reason-input", "audit 2026-Q4")
        page.click("#pin-run")
        note = page.locator("#pin-note")
        expect(note).to_contain_text("audit 2026-Q4")
        expect(note).to_contain_text("Pinned by admin")
        page.click("#unpin-run")
        expect(page.locator("#pin-reason-input")).to_be_visible()
        expect(page.locator("#pin-note")).to_have_count(0)

    browse(server, body)
    run = api(server, "GET", f"/api/runs/{run_id}").json()
    assert run["pinned_at"] is None and run["pin_reason"] is None


def test_a_run_only_in_the_archive_is_pinned_from_its_page(
    ff_env: dict[str, str], make_pipeline: MakePipeline, s3: S3Env
) -> None:
    """Retention archived the run and removed its row: its page still offers the pin,
    and the pin is shown (it is kept with the archive ledger entry)."""
    make_pipeline("audited", "print('numbers for the auditor')\n")
    env = {**os.environ, **ff_env, **s3.env(), "LOG_RETENTION_RUNS": "1"}
    first = run_cli("run", "audited", env=env).stdout.strip().splitlines()[-1]
    assert run_cli("run", "audited", env=env).returncode == 0
    res = run_cli("cleanup", "--json", env=env)
    assert json.loads(res.stdout)["deleted_runs"] == 1, res.stdout + res.stderr
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{first}")
        expect(page.locator("#pin-note")).to_have_count(0)
        page.fill("#pin-reason-input", "legal request 42")
        page.click("#pin-run")
        note = page.locator("#pin-note")
        expect(note).to_contain_text("legal request 42")
        expect(note).to_contain_text("Pinned by admin")
        page.reload()
        expect(page.locator("#pin-note")).to_contain_text("legal hold")
        expect(page.locator("#unpin-run")).to_be_visible()

    with fastflow_serve(env) as url:
        server = Server(url, env)
        browse(server, body)
        run = api(server, "GET", f"/api/runs/{first}").json()
    assert run["pin_reason"] == "legal request 42" and run["pinned_by"] == "admin"


def test_the_api_reference_renders_from_fastflows_own_script(server: Server) -> None:
    """/docs: the routes from /openapi.json, rendered under the page policy (no CDN, no
    inline script), with no error in the browser's console (where a blocked script or
    style would show)."""

    def body(page: Any, server: Server) -> None:
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{server.url}/docs")
        expect(page.locator("#api-docs[data-rendered=true]")).to_have_count(1)
        runs = page.locator("section.api-op[data-path='/api/runs'][data-method=get]")
        expect(runs).to_contain_text("GET /api/runs")
        expect(runs.locator("td", has_text="limit")).to_have_count(1)
        pin = page.locator("section.api-op[data-path='/api/runs/{run_id}/pin'][data-method=post]")
        expect(pin).to_contain_text("Body: application/json PinIn")
        assert errors == []

    browse(server, body)
