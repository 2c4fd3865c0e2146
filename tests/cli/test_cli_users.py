"""``fastflow user list|passwd|disable|enable|delete`` and ``token create --expires-in``
through the real command in a subprocess (issue 13)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import ApiToken, User, WebSession
from fastflow.server import create_app
from tests.conftest import run_cli

PASSWORD = "first-password"


def _create(name: str, role: str, password: str = PASSWORD) -> None:
    res = run_cli("user", "create", name, "--role", role, input=password + "\n")
    assert res.returncode == 0, res.stderr


def _users() -> dict[str, dict[str, object]]:
    res = run_cli("user", "list", "--json")
    assert res.returncode == 0, res.stderr
    return {u["name"]: u for u in json.loads(res.stdout)}


def _sessions(app: Context, name: str) -> int:
    with app.db.session() as s:
        user_ids = [u.id for u in s.scalars(select(User).where(User.username == name))]
        return len(list(s.scalars(select(WebSession).where(WebSession.user_id.in_(user_ids)))))


@pytest.fixture
def client(app: Context) -> TestClient:
    return TestClient(create_app(app, schedule=False))


def _login(client: TestClient, name: str, password: str = PASSWORD) -> int:
    res = client.post("/api/auth/login", json={"username": name, "password": password})
    status: int = res.status_code
    return status


def test_user_list_shows_users_without_hashes(app: Context, client: TestClient) -> None:
    _create("ada", "admin")
    _create("bo", "viewer")
    users = _users()
    assert set(users) == {"ada", "bo"}
    ada = users["ada"]
    assert set(ada) >= {"name", "role", "created_at", "disabled", "last_login_at"}
    assert ada["role"] == "admin" and ada["disabled"] is False and ada["last_login_at"] is None
    datetime.fromisoformat(str(ada["created_at"]))
    assert _login(client, "ada") == 200
    last = _users()["ada"]["last_login_at"]
    assert last is not None
    assert abs(datetime.fromisoformat(str(last)) - datetime.now(UTC)) < timedelta(minutes=5)
    text = run_cli("user", "list")
    assert text.returncode == 0 and "ada" in text.stdout and "viewer" in text.stdout
    assert "argon2" not in text.stdout + run_cli("user", "list", "--json").stdout


def test_passwd_changes_the_password_and_ends_sessions(app: Context, client: TestClient) -> None:
    _create("ada", "admin")
    assert _login(client, "ada") == 200
    assert _sessions(app, "ada") == 1
    res = run_cli("user", "passwd", "ada", input="second-password\n")
    assert res.returncode == 0, res.stderr
    assert _sessions(app, "ada") == 0
    assert _login(client, "ada") == 401
    assert _login(client, "ada", "second-password") == 200
    short = run_cli("user", "passwd", "ada", input="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr


def test_disable_ends_sessions_blocks_login_and_tokens(app: Context, client: TestClient) -> None:
    _create("ada", "admin")
    _create("bo", "viewer")
    token = run_cli("token", "create", "--name", "bo-script", "--role", "viewer", "--user", "bo")
    assert token.returncode == 0, token.stderr
    bearer = {"Authorization": f"Bearer {token.stdout.strip()}"}
    assert client.get("/api/runs", headers=bearer).status_code == 200
    assert _login(client, "bo") == 200
    assert client.get("/api/runs").status_code == 200
    res = run_cli("user", "disable", "bo")
    assert res.returncode == 0, res.stderr
    assert _sessions(app, "bo") == 0
    readcache.invalidate()  # this test's process caches callers for one second
    assert client.get("/api/runs").status_code == 401  # the session ended at once
    assert client.get("/api/runs", headers=bearer).status_code == 401
    assert _login(client, "bo") == 401
    assert _users()["bo"]["disabled"] is True
    assert run_cli("user", "enable", "bo").returncode == 0
    readcache.invalidate()  # (the 401 above is cached for a second: not what is tested)
    assert _login(client, "bo") == 200
    assert client.get("/api/runs", headers=bearer).status_code == 200


def test_delete_ends_sessions_and_revokes_tokens(app: Context, client: TestClient) -> None:
    _create("ada", "admin")
    _create("bo", "viewer")
    token = run_cli("token", "create", "--name", "bo-script", "--role", "viewer", "--user", "bo")
    assert _login(client, "bo") == 200
    res = run_cli("user", "delete", "bo")
    assert res.returncode == 0, res.stderr
    assert "1 token(s) revoked" in res.stderr
    assert set(_users()) == {"ada"}
    assert _sessions(app, "bo") == 0
    readcache.invalidate()
    assert client.get("/api/runs").status_code == 401
    bearer = {"Authorization": f"Bearer {token.stdout.strip()}"}
    assert client.get("/api/runs", headers=bearer).status_code == 401
    listed = json.loads(run_cli("token", "list", "--json").stdout)
    assert listed[0]["revoked"] is True and listed[0]["user"] is None


def test_the_last_enabled_admin_cannot_be_disabled_or_deleted(app: Context) -> None:
    _create("ada", "admin")
    _create("bo", "viewer")
    for command in ("disable", "delete"):
        res = run_cli("user", command, "ada")
        assert res.returncode == 1
        assert "last enabled admin" in res.stderr and "Traceback" not in res.stderr
    _create("cy", "admin")
    assert run_cli("user", "disable", "cy").returncode == 0
    assert run_cli("user", "delete", "ada").returncode == 1  # cy is disabled: ada is the last
    assert run_cli("user", "enable", "cy").returncode == 0
    assert run_cli("user", "delete", "ada").returncode == 0
    assert set(_users()) == {"bo", "cy"}


@pytest.mark.parametrize("command", ["passwd", "disable", "enable", "delete"])
def test_unknown_user_is_exit_1_naming_it(app: Context, command: str) -> None:
    res = run_cli("user", command, "ghost", input="some-password\n")
    assert res.returncode == 1
    assert "ghost" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_token_expiry(app: Context, client: TestClient) -> None:
    res = run_cli("token", "create", "--name", "ci", "--role", "viewer", "--expires-in", "90d")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1
    assert (
        run_cli(
            "token", "create", "--name", "h", "--role", "viewer", "--expires-in", "12h"
        ).returncode
        == 0
    )
    assert (
        run_cli(
            "token", "create", "--name", "m", "--role", "viewer", "--expires-in", "30m"
        ).returncode
        == 0
    )
    assert run_cli("token", "create", "--name", "forever", "--role", "viewer").returncode == 0
    listed = {t["name"]: t for t in json.loads(run_cli("token", "list", "--json").stdout)}
    now = datetime.now(UTC)
    for name, delta in (
        ("ci", timedelta(days=90)),
        ("h", timedelta(hours=12)),
        ("m", timedelta(minutes=30)),
    ):
        expires = datetime.fromisoformat(listed[name]["expires_at"])
        assert abs(expires - (now + delta)) < timedelta(minutes=5), name
    assert listed["forever"]["expires_at"] is None
    assert "expires" in run_cli("token", "list").stdout
    bearer = {"Authorization": f"Bearer {res.stdout.strip()}"}
    assert client.get("/api/runs", headers=bearer).status_code == 200
    with app.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "ci"))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    readcache.invalidate()
    assert client.get("/api/runs", headers=bearer).status_code == 401
    assert json.loads(run_cli("token", "list", "--json").stdout)[0]["state"] == "expired"


@pytest.mark.parametrize("bad", ["5y", "0m", "90", "-1d", "99999d"])
def test_token_expiry_refuses_bad_durations(app: Context, bad: str) -> None:
    res = run_cli("token", "create", "--name", "x", "--role", "viewer", "--expires-in", bad)
    assert res.returncode == 2 and "--expires-in" in res.stderr and res.stdout == ""
