"""The Secrets page in a real headless Chromium (Playwright) against a real `fastflow
serve`: names, times and pipelines listed; a write-only form; delete with confirm;
admins only; the value in no page, no API answer and no line of the server's log."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from fastflow.context import Context
from fastflow.runs import secret_store
from tests.conftest import MakePipeline, run_cli
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, PASSWORD, SCREENSHOTS

VALUE = "ui-value-DO-NOT-LEAK-9"
LEAK = "DO-NOT-LEAK"


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is missing (make test installs it: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _in_browser(url: str, body: Callable[[Any], None]) -> None:
    """Run ``body(page)`` logged in as the admin, in a thread of its own: Playwright's
    sync API allows one instance per thread, and the session browser of
    tests/web/test_ui.py may hold the main thread's."""
    failed: list[BaseException] = []

    def browse() -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
                    page.set_default_timeout(20_000)
                    page.goto(url + "/runs")
                    page.fill("input[name=username]", "admin")
                    page.fill("input[name=password]", PASSWORD)
                    page.click("button[type=submit]")
                    page.wait_for_url(re.compile(r".*/runs$"))
                    body(page)
                finally:
                    browser.close()
        except BaseException as e:  # raised again in the test's thread
            failed.append(e)

    thread = threading.Thread(target=browse, daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def _users(env: dict[str, str]) -> None:
    for name, role in (("admin", "admin"), ("viewer", "viewer")):
        res = run_cli("user", "create", name, "--role", role, env=env, input=PASSWORD + "\n")
        assert res.returncode == 0, res.stderr


@contextmanager
def _session(url: str, username: str) -> Iterator[httpx.Client]:
    """An HTTP client logged in as ``username`` through the login form."""
    with httpx.Client(base_url=url, timeout=10) as client:
        res = client.post(
            "/login", data={"username": username, "password": PASSWORD, "next": "/runs"}
        )
        assert res.status_code == 303, res.text
        yield client


def test_admin_sets_and_deletes_secrets_and_no_value_leaks(
    ff_env: dict[str, str], make_pipeline: MakePipeline, app: Context, tmp_path: Path
) -> None:
    _need_chromium()
    make_pipeline("etl", config='{"secrets": ["API_TOKEN", "DB_PASSWORD"]}')
    make_pipeline("report", config='{"secrets": ["API_TOKEN"]}')
    env = {**os.environ, **ff_env}
    _users(env)
    assert run_cli("secret", "set", "EXISTING", env=env, input="existing-value\n").returncode == 0
    server_log = tmp_path / "server.log"
    pages: list[str] = []

    def body(page: Any) -> None:
        page.click("nav >> text=Secrets")
        page.wait_for_url(re.compile(r".*/secrets$"))
        existing = page.locator('#secrets-table tr[data-secret="EXISTING"]')
        expect(existing.locator(".pipelines")).to_have_text("–")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", existing.locator(".updated").inner_text()
        )
        missing = page.locator("#secrets-missing-list li")
        expect(missing).to_have_count(2)
        expect(page.locator('li[data-missing="API_TOKEN"]')).to_contain_text("etl, report")
        expect(page.locator('li[data-missing="DB_PASSWORD"]')).to_contain_text("etl")
        value_field = page.locator("#secret-value")
        assert value_field.get_attribute("type") == "password"
        assert value_field.input_value() == ""
        _shot(page, "secrets")

        # a bad name is refused in the page, nothing is sent
        page.fill("#secret-name", "bad-name")
        page.fill("#secret-value", VALUE)
        page.click("#secret-save")
        expect(page.locator("#secret-result.error")).to_contain_text("upper-case letters")
        assert [s.name for s in secret_store.list_secrets(app.db)] == ["EXISTING"]

        # "Set" next to a missing name fills the form; saving adds the row in place
        page.locator('li[data-missing="API_TOKEN"] button').click()
        expect(page.locator("#secret-name")).to_have_value("API_TOKEN")
        page.fill("#secret-value", VALUE)
        page.click("#secret-save")
        expect(page.locator("#secret-result")).to_have_text("Saved API_TOKEN.")
        row = page.locator('#secrets-table tr[data-secret="API_TOKEN"]')
        expect(row.locator(".pipelines")).to_have_text("etl, report")
        expect(page.locator('li[data-missing="API_TOKEN"]')).to_have_count(0)
        assert value_field.input_value() == ""
        names = page.locator("#secrets-table tr[data-secret] .name").all_inner_texts()
        assert names == ["API_TOKEN", "EXISTING"]
        pages.append(page.content())

        # the stored value is the one typed; a reload shows it nowhere
        stored = secret_store.values_for(app.db, app.settings, ["API_TOKEN"])
        assert stored == {"API_TOKEN": VALUE}
        page.reload()
        expect(row.locator(".pipelines")).to_have_text("etl, report")
        assert page.locator("#secret-value").input_value() == ""
        pages.append(page.content())

        # replace: the same name gets a new value and a new time
        before = row.locator("time").get_attribute("datetime")
        row.locator(".secret-replace").click()
        expect(page.locator("#secret-name")).to_have_value("API_TOKEN")
        page.fill("#secret-value", "replaced-" + VALUE)
        page.click("#secret-save")
        expect(page.locator("#secret-result")).to_have_text("Saved API_TOKEN.")
        expect(row.locator("time")).not_to_have_attribute("datetime", before or "")
        stored = secret_store.values_for(app.db, app.settings, ["API_TOKEN"])
        assert stored == {"API_TOKEN": "replaced-" + VALUE}

        # a value too short to be masked is saved with a warning that says so
        page.fill("#secret-name", "PIN")
        page.fill("#secret-value", "123")
        page.click("#secret-save")
        expect(page.locator("#secret-result.warn")).to_contain_text("it is not masked")
        page.locator('#secrets-table tr[data-secret="PIN"]').wait_for()
        assert secret_store.delete_secret(app.db, "PIN")
        page.reload()

        # delete asks first: dismissed, nothing happens
        messages: list[str] = []

        def dismiss(dialog: Any) -> None:
            messages.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", dismiss)
        row.locator(".secret-delete").click()
        expect(row).to_have_count(1)
        assert secret_store.get_info(app.db, "API_TOKEN") is not None

        def accept(dialog: Any) -> None:
            messages.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        row.locator(".secret-delete").click()
        expect(page.locator("#secret-result")).to_have_text("Deleted API_TOKEN.")
        expect(row).to_have_count(0)
        expect(page.locator('li[data-missing="API_TOKEN"]')).to_contain_text("etl, report")
        assert secret_store.get_info(app.db, "API_TOKEN") is None
        assert all(m.startswith("Delete secret API_TOKEN?") for m in messages)
        assert len(messages) == 2 and "etl, report" in messages[0]
        pages.append(page.content())

    with server_log.open("wb") as log, fastflow_serve(env, stderr=log) as url:
        _in_browser(url, body)
        with _session(url, "admin") as admin:
            listing = admin.get("/api/secrets")
            assert listing.status_code == 200
            assert [s["name"] for s in listing.json()] == ["EXISTING"]
            pages.append(listing.text)
    text = server_log.read_text(encoding="utf-8", errors="replace")
    assert "Application startup complete" in text  # the server's log (stderr) was captured
    assert LEAK not in text
    assert pages and all(LEAK not in p and "existing-value" not in p for p in pages)


def test_viewers_get_no_link_and_a_403_page(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    env = {**os.environ, **ff_env}
    _users(env)
    assert run_cli("secret", "set", "HIDDEN_NAME", env=env, input=VALUE + "\n").returncode == 0
    with fastflow_serve(env) as url:
        with _session(url, "viewer") as viewer:
            runs = viewer.get("/runs")
            assert runs.status_code == 200 and 'href="/secrets"' not in runs.text
            page = viewer.get("/secrets")
            assert page.status_code == 403
            assert "admin role" in page.text and "HIDDEN_NAME" not in page.text
            assert "secret-form" not in page.text
            assert viewer.get("/api/secrets").status_code == 403
        with _session(url, "admin") as admin:
            assert 'href="/secrets"' in admin.get("/runs").text
            page = admin.get("/secrets")
            assert page.status_code == 200 and "HIDDEN_NAME" in page.text
            assert LEAK not in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert "<script>" not in page.text  # no inline script
        anonymous = httpx.get(url + "/secrets", follow_redirects=False, timeout=10)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/login?next=/secrets"
