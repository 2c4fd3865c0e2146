"""Fixtures of the server-rendered page tests (no browser), and the browser tests'
wait for ``expect``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from fastflow import accounts
from fastflow.context import Context
from fastflow.server import create_app
from fastflow.session_cookie import SESSION_COOKIE

# Playwright's ``expect`` waits 5 s by default, whatever a page's own default timeout: on
# a loaded CI machine a cleanup pass against a real S3 server (or a run's start) can take
# longer than that, and a test waited for its text failed while the page was still right.
# A longer wait costs nothing where the condition holds; explicit timeouts still win.
expect.set_options(timeout=20_000)


@pytest.fixture
def viewer_pages(app: Context) -> Iterator[TestClient]:
    """The web UI as a signed-in viewer sees it (session cookie), in-process."""
    accounts.create_user(app.db, "viewer", "a long viewer password", "viewer")
    token, _ = accounts.login(app.db, "viewer", "a long viewer password")
    client = TestClient(create_app(app, schedule=False), base_url="http://localhost")
    client.cookies.set(SESSION_COOKIE, token)
    yield client
