"""Login CSRF in a real headless Chromium (Playwright) against a real `fastflow serve`: a
page on another origin (a tiny local HTTP server on another port) that submits a login
form to ``/login`` logs nobody in; the server's own login page still works."""

from __future__ import annotations

import html
import os
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import run_cli
from tests.harness.ports import LOCALHOST
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, PASSWORD
from tests.web.test_ui_secrets import _need_chromium

ATTACKER_PASSWORD = "mallory-password"


def _attacker_page(target: str) -> bytes:
    """A page that logs its visitor in to the attacker's own account."""
    action = html.escape(target + "/login", quote=True)
    return (
        "<!doctype html><title>win a prize</title>"
        f'<form method="post" action="{action}">'
        '<input name="username" value="mallory">'
        f'<input name="password" value="{ATTACKER_PASSWORD}">'
        '<input type="hidden" name="next" value="/runs">'
        '<button type="submit" id="prize">Claim your prize</button></form>'
    ).encode()


@pytest.fixture
def attacker_site() -> Iterator[Callable[[str], str]]:
    """Serve the attacker's page from another origin; yields ``page_url(target)``."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get("/", b"")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((LOCALHOST, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def page_url(target: str) -> str:
        pages["/"] = _attacker_page(target)
        return f"http://{LOCALHOST}:{httpd.server_address[1]}/"

    try:
        yield page_url
    finally:
        httpd.shutdown()
        httpd.server_close()


def _in_browser(body: Callable[[Any], None]) -> None:
    """Run ``body(context)`` in a fresh browser context, in a thread of its own (the sync
    Playwright API allows one instance per thread; tests/web/test_ui.py may hold the
    main thread's)."""
    failed: list[BaseException] = []

    def browse() -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    body(browser.new_context())
                finally:
                    browser.close()
        except BaseException as e:  # raised again in the test's thread
            failed.append(e)

    thread = threading.Thread(target=browse, daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def test_a_login_form_on_another_origin_logs_nobody_in(
    ff_env: dict[str, str], attacker_site: Callable[[str], str]
) -> None:
    _need_chromium()
    env = {**os.environ, **ff_env}
    for name, role, password in (
        ("admin", "admin", PASSWORD),
        ("mallory", "viewer", ATTACKER_PASSWORD),
    ):
        res = run_cli("user", "create", name, "--role", role, env=env, input=password + "\n")
        assert res.returncode == 0, res.stderr
    with fastflow_serve(env) as url:
        evil = attacker_site(url)
        assert not evil.startswith(url)

        def body(context: Any) -> None:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(evil)
            with page.expect_response(
                lambda r: r.url == url + "/login" and r.request.method == "POST"
            ) as posted:
                page.click("#prize")
            assert posted.value.status == 403  # before the fix: 303 to /runs, logged in
            expect(page.locator("p.error")).to_contain_text("login refused")
            assert not [c for c in context.cookies() if c["name"] == "fastflow_session"]
            page.goto(url + "/runs")
            expect(page).to_have_url(re.compile(r".*/login\?next=/runs$"))
            # the server's own login page still logs in
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(re.compile(r".*/runs$"))
            expect(page.locator(".who")).to_contain_text("admin")

        _in_browser(body)
