"""The web UI in a real headless Chromium (Playwright) against a real `fastflow serve`."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = (
    Path(os.environ.get("FASTFLOW_SCREENSHOTS", ""))
    if os.environ.get("FASTFLOW_SCREENSHOTS")
    else None
)
PASSWORD = "ui-test-password"


@dataclass
class Server:
    url: str
    env: dict[str, str]


@pytest.fixture
def server(ff_env: dict[str, str], s3: S3Env, make_pipeline: MakePipeline) -> Iterator[Server]:
    make_pipeline(
        "hello world",
        "print('hello from the UI test')\nprint('second line')\n",
        config='{"description": "says hello"}',
    )
    make_pipeline("nightly-etl", "import sys\nprint('extract')\nprint('oops', file=sys.stderr)\n")
    env = {
        **os.environ,
        **ff_env,
        **s3.env(),
        "LOG_RETENTION_RUNS": "5",
        "S3_CONNECT_TIMEOUT": "1",
        "S3_READ_TIMEOUT": "2",
    }
    for _ in range(2):
        assert run_cli("run", "nightly-etl", env=env).returncode == 0
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    with fastflow_serve(env) as url:
        yield Server(url, env)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is missing (make test installs it: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, server: Server) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.goto(server.url + "/runs")
    assert "/login" in pg.url  # not logged in: sent to the login page
    pg.fill("input[name=username]", "admin")
    pg.fill("input[name=password]", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(re.compile(r".*/runs$"))
    yield pg
    context.close()


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_login_is_required_and_wrong_password_is_refused(chromium: Any, server: Server) -> None:
    context = chromium.new_context()
    pg = context.new_page()
    pg.goto(server.url + "/settings")
    assert "/login" in pg.url
    pg.fill("input[name=username]", "admin")
    pg.fill("input[name=password]", "wrong-password")
    pg.click("button[type=submit]")
    assert "wrong username or password" in pg.text_content("p.error")
    context.close()


def test_run_a_pipeline_and_watch_it_finish(page: Any, server: Server) -> None:
    page.click("nav >> text=Pipelines")
    row = page.locator('tr[data-pipeline="hello world"]')
    assert "says hello" in row.text_content()
    _shot(page, "pipelines")
    row.locator("button.run-now").click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}$"))
    page.wait_for_selector("#run-status .st-success", timeout=60_000)
    expect(page.locator("#log-view")).to_contain_text("second line", timeout=30_000)
    text = page.text_content("#log-view")
    assert "hello from the UI test" in text
    assert re.search(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] hello from the UI test", text)
    _shot(page, "run")


def test_open_a_run_and_see_its_log(page: Any, server: Server) -> None:
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 2
    _shot(page, "runs")
    rows.first.locator("a").first.click()
    expect(page.locator("#log-view")).to_contain_text("oops", timeout=30_000)
    assert "extract" in page.text_content("#log-view")
    assert page.locator("#log-download").get_attribute("href").endswith("/logs")


def test_failed_backup_shows_toast_bell_and_links_to_the_run(
    page: Any, server: Server, s3: S3Env
) -> None:
    httpx.put(  # keep only the newest run, so that the older one must be archived
        server.url + "/api/settings",
        json={"log_retention_runs": 1},
        headers={"Authorization": "Bearer " + _admin_token(server)},
    ).raise_for_status()
    s3.proxy.stop()
    page.click("nav >> text=Settings")
    assert page.locator("#bell-badge").is_hidden()
    page.click("#cleanup-now")
    page.wait_for_selector("#cleanup-result.error")
    assert "1 backup failures" in page.text_content("#cleanup-result")
    toast = page.wait_for_selector(".toast.error")
    assert "S3 log backup failed: nightly-etl" in toast.text_content()
    assert "connection refused" in toast.text_content()
    badge = page.locator("#bell-badge")
    badge.wait_for(state="visible")
    assert badge.text_content() == "1"
    _shot(page, "settings")
    page.click("#bell")
    item = page.locator("#notif-list li.unread a")
    assert item.count() == 1
    href = item.get_attribute("href")
    assert href is not None and re.fullmatch(r"/runs/[0-9a-f-]{36}", href)
    _shot(page, "notifications")
    item.click()
    page.wait_for_url(re.compile(".*" + re.escape(href) + "$"))
    assert page.text_content("h1").startswith("nightly-etl")
    # the same ongoing failure is not toasted again on the next page
    page.goto(server.url + "/runs")
    page.locator("#notif-list li[data-failure-id]").wait_for(state="attached")  # polled
    assert page.locator(".toast").count() == 0
    assert page.locator("#bell-badge").is_hidden()  # opened from the bell: read


def _admin_token(server: Server) -> str:
    res = run_cli("token", "create", "--name", "ui-test", "--role", "admin", env=server.env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_object_path_preview_follows_the_prefix(page: Any, server: Server) -> None:
    page.click("nav >> text=Settings")
    expect(page.locator("#preview-log")).to_have_text("pipeline-logs/{pipeline}/{run_id}/run.log")
    field = page.locator("input[name=s3_prefix]")
    field.fill("")
    field.type("audit/2026")
    expect(page.locator("#preview-log")).to_have_text("audit/2026/{pipeline}/{run_id}/run.log")
    expect(page.locator("#preview-metrics")).to_have_text(
        "audit/2026/{pipeline}/{run_id}/metrics.jsonl"
    )
