"""Fixtures of the server-rendered page tests (no browser)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.context import Context
from fastflow.server import create_app
from fastflow.session_cookie import SESSION_COOKIE


@pytest.fixture
def viewer_pages(app: Context) -> Iterator[TestClient]:
    """The web UI as a signed-in viewer sees it (session cookie), in-process."""
    accounts.create_user(app.db, "viewer", "a long viewer password", "viewer")
    token, _ = accounts.login(app.db, "viewer", "a long viewer password")
    client = TestClient(create_app(app, schedule=False), base_url="http://localhost")
    client.cookies.set(SESSION_COOKIE, token)
    yield client
