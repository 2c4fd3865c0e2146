"""Login hardening (issue 13): throttling with 429 + Retry-After, argon2 off the event loop,
login CSRF (Origin/Referer), purged sessions, disabled users, expiring tokens."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from fastflow import accounts
from fastflow.accounts import LoginThrottle, TooManyLogins
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ApiToken, WebSession, utcnow
from fastflow.server import create_app
from tests.conftest import run_cli
from tests.harness.serve import fastflow_serve

PASSWORD = "correct horse battery"
ORIGIN = {"Origin": "http://testserver"}  # what a browser on the login page sends


class Api:
    def __init__(self, ctx: Context, client: TestClient) -> None:
        self.ctx = ctx
        self.client = client

    def other_client(self, host: str) -> TestClient:
        """The same app, seen from another client address."""
        return TestClient(self.client.app, client=(host, 50000))

    def login(self, username: str, password: str, client: TestClient | None = None) -> Any:
        return (client or self.client).post(
            "/api/auth/login", json={"username": username, "password": password}
        )

    def form_login(self, username: str, password: str, **headers: str) -> Any:
        return self.client.post(
            "/login",
            data={"username": username, "password": password, "next": "/runs"},
            headers=headers,
            follow_redirects=False,
        )

    def sessions(self) -> int:
        with self.ctx.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(WebSession)) or 0)


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    accounts.create_user(ctx.db, "ada", PASSWORD, "admin")
    yield Api(ctx, TestClient(create_app(ctx, schedule=False)))
    ctx.db.dispose()


# --- throttling ----------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_user_even_for_the_right_password(api: Api) -> None:
    for _ in range(5):
        assert api.login("ada", "wrong-password").status_code == 401
    locked = api.login("ada", PASSWORD)  # the right password: no oracle while locked
    assert locked.status_code == 429
    assert "too many failed logins" in locked.json()["detail"]
    first = int(locked.headers["Retry-After"])
    assert 1 <= first <= 15 * 60
    assert "set-cookie" not in locked.headers
    again = api.login("ada", PASSWORD)
    assert again.status_code == 429
    assert int(again.headers["Retry-After"]) > first  # grows with further attempts
    # the lock is per user: another user from another address is not affected
    accounts.create_user(api.ctx.db, "bo", PASSWORD, "viewer")
    assert api.login("bo", PASSWORD, api.other_client("10.0.0.9")).status_code == 200


def test_the_login_form_shows_the_lock_with_retry_after(api: Api) -> None:
    for _ in range(5):
        assert api.form_login("ada", "wrong-password", **ORIGIN).status_code == 401
    page = api.form_login("ada", PASSWORD, **ORIGIN)
    assert page.status_code == 429
    assert int(page.headers["Retry-After"]) >= 1
    assert "too many failed logins" in page.text and "fastflow_session" not in str(page.cookies)


def test_a_success_resets_the_users_failures(api: Api) -> None:
    for _ in range(4):
        assert api.login("ada", "wrong-password").status_code == 401
    assert api.login("ada", PASSWORD).status_code == 200
    for _ in range(5):  # counted from zero again: five more failures before a lock
        assert api.login("ada", "wrong-password").status_code == 401
    assert api.login("ada", PASSWORD).status_code == 429


def test_twenty_failures_from_one_address_lock_that_address(api: Api) -> None:
    attacker = api.other_client("203.0.113.7")
    for i in range(20):  # a different (unknown) user name each time: no user lock
        assert api.login(f"guess{i}", "wrong-password", attacker).status_code == 401
    res = api.login("ada", PASSWORD, attacker)
    assert res.status_code == 429 and int(res.headers["Retry-After"]) >= 1
    # ada herself, from her own address, is not locked out by the attacker's address
    assert api.login("ada", PASSWORD, api.other_client("198.51.100.1")).status_code == 200


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_waits_double_expire_and_forget() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        throttle.begin("ada", "10.0.0.1")  # admitted; counted as failures
    waits = []
    for _ in range(8):
        with pytest.raises(TooManyLogins) as refused:
            throttle.begin("ada", "10.0.0.1")
        waits.append(refused.value.retry_after)
    assert waits == [30, 60, 120, 240, 480, 900, 900, 900]  # doubling, at most 15 min
    clock.now += 900  # waited as told: one more attempt is checked
    throttle.begin("ada", "10.0.0.1")
    clock.now += 15 * 60 + 1  # a quiet window: everything is forgotten
    for _ in range(5):
        throttle.begin("ada", "10.0.0.1")


def test_throttle_success_forgets_the_user_and_parallel_attempts_count() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    attempts = [throttle.begin("ada", "10.0.0.1") for _ in range(5)]  # in flight together
    with pytest.raises(TooManyLogins):
        throttle.begin("ada", "10.0.0.1")
    throttle.succeeded(attempts[-1])
    throttle.begin("ada", "10.0.0.1")


def test_throttle_locked_address_does_not_lock_the_users_it_tries() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for i in range(20):
        throttle.begin(f"u{i}", "10.0.0.1")
    for _ in range(10):
        with pytest.raises(TooManyLogins):
            throttle.begin("ada", "10.0.0.1")
    throttle.begin("ada", "10.0.0.2")  # ada is not locked: the refusals were the address's


def test_throttle_counts_an_ipv6_block_as_one_address() -> None:
    assert accounts.address_key("2001:db8::1") == accounts.address_key("2001:db8::ffff")
    assert accounts.address_key("2001:db8::1") != accounts.address_key("2001:db8:0:1::1")
    assert accounts.address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert accounts.address_key(None) == "unknown"


def test_thirty_parallel_logins_do_not_starve_health(ff_env: dict[str, str]) -> None:
    env = {**os.environ, **ff_env}
    res = run_cli("user", "create", "ada", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    with fastflow_serve(env) as url:
        start = threading.Barrier(31)
        statuses: list[int] = []

        def wrong_login(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                start.wait()
                body = {"username": f"user{i}", "password": "wrong-password"}
                statuses.append(client.post("/api/auth/login", json=body).status_code)

        threads = [threading.Thread(target=wrong_login, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        latencies: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            start.wait()
            burst_began = time.perf_counter()
            while any(t.is_alive() for t in threads) or not latencies:
                began = time.perf_counter()
                assert client.get("/api/health").status_code == 200
                latencies.append(time.perf_counter() - began)
        for t in threads:
            t.join()
        burst = time.perf_counter() - burst_began
        assert sorted(set(statuses)) <= [401, 429] and len(statuses) == 30
        # a starved health check waits behind the queue of password checks, most of the
        # burst; on a machine loaded by other work (the other test worker) the burst and
        # any one request stretch alike, so the bound grows with the burst
        assert max(latencies) < max(1.0, burst / 4), (burst, latencies)


# --- login CSRF ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver:8080"},  # another port is another origin
        {"Referer": "http://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},  # a browser that names no origin at all
        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"},
    ],
)
def test_a_login_from_another_site_logs_nobody_in(api: Api, headers: dict[str, str]) -> None:
    page = api.form_login("ada", PASSWORD, **headers)
    assert page.status_code == 403
    assert "login refused" in page.text and "set-cookie" not in page.headers
    res = api.client.post(
        "/api/auth/login", json={"username": "ada", "password": PASSWORD}, headers=headers
    )
    assert res.status_code == 403 and "login refused" in res.json()["detail"]
    assert "set-cookie" not in res.headers
    assert api.sessions() == 0


def test_same_origin_logins_and_api_clients_without_origin_still_work(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTFLOW_BASE_URL", "https://ff.example.org")
    ctx = bootstrap(load_settings())
    accounts.create_user(ctx.db, "ada", PASSWORD, "admin")
    api = Api(ctx, TestClient(create_app(ctx, schedule=False)))
    try:
        assert api.form_login("ada", PASSWORD, **ORIGIN).status_code == 303
        assert api.form_login("ada", PASSWORD, Referer="http://testserver/login").status_code == 303
        # the public address of a proxy in front of the server (FASTFLOW_BASE_URL)
        ok = api.form_login("ada", PASSWORD, Origin="https://ff.example.org")
        assert ok.status_code == 303 and "fastflow_session" in ok.headers["set-cookie"]
        # scripts (curl, httpx) send no Origin and are not browsers
        assert api.login("ada", PASSWORD).status_code == 200
        assert api.form_login("ada", PASSWORD).status_code == 303
    finally:
        ctx.db.dispose()


# --- sessions ------------------------------------------------------------------------


def test_login_purges_expired_sessions(api: Api) -> None:
    for _ in range(3):
        assert api.login("ada", PASSWORD).status_code == 200
    with api.ctx.db.session() as s:
        s.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert api.sessions() == 3
    assert api.login("ada", PASSWORD).status_code == 200
    assert api.sessions() == 1  # only the new one


def test_api_logout_without_csrf_token_still_ends_the_session(api: Api) -> None:
    res = api.login("ada", PASSWORD)
    assert res.status_code == 200
    assert api.client.post("/api/auth/logout").status_code == 200  # no X-CSRF-Token
    api.client.cookies.set("fastflow_session", res.cookies["fastflow_session"])  # replayed
    assert api.client.get("/api/runs").status_code == 401
    assert api.sessions() == 0


def test_a_disabled_user_cannot_log_in_and_their_session_ends(api: Api) -> None:
    accounts.create_user(api.ctx.db, "bo", PASSWORD, "viewer")
    assert api.login("bo", PASSWORD).status_code == 200
    assert api.client.get("/api/runs").status_code == 200
    assert api.client.get("/runs", follow_redirects=False).status_code == 200
    assert accounts.disable_user(api.ctx.db, "bo")
    assert api.client.get("/api/runs").status_code == 401
    assert api.client.get("/runs", follow_redirects=False).status_code == 303
    res = api.login("bo", PASSWORD)
    assert res.status_code == 401 and "disabled" in res.json()["detail"]
    assert accounts.enable_user(api.ctx.db, "bo")
    assert api.login("bo", PASSWORD).status_code == 200


# --- tokens --------------------------------------------------------------------------


def test_expired_tokens_are_refused_like_unknown_ones(api: Api) -> None:
    token = accounts.create_token(api.ctx.db, "short", "viewer", expires_in=timedelta(hours=1))
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/runs", headers=headers).status_code == 200
    with api.ctx.db.session() as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    from fastflow.db import cache as readcache

    readcache.invalidate()  # another process's change shows within the one-second cache
    res = api.client.get("/api/runs", headers=headers)
    assert res.status_code == 401
    unknown = api.client.get("/api/runs", headers={"Authorization": "Bearer ff_nothing"})
    assert res.json() == unknown.json()
    # listed as expired for a week, then purged at a login
    assert [t.state() for t in accounts.list_tokens(api.ctx.db)] == ["expired"]
    accounts.purge_expired(api.ctx.db, utcnow() + accounts.EXPIRED_TOKEN_GRACE)
    assert accounts.list_tokens(api.ctx.db) == []


def test_a_users_token_stops_with_the_user_and_never_exceeds_their_role(api: Api) -> None:
    accounts.create_user(api.ctx.db, "bo", PASSWORD, "viewer")
    token = accounts.create_token(api.ctx.db, "bo-script", "admin", username="bo")
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/runs", headers=headers).status_code == 200
    assert api.client.post("/api/settings/cleanup/force", headers=headers).status_code == 403
    accounts.disable_user(api.ctx.db, "bo")
    assert api.client.get("/api/runs", headers=headers).status_code == 401
    accounts.enable_user(api.ctx.db, "bo")
    assert api.client.get("/api/runs", headers=headers).status_code == 200
    assert accounts.delete_user(api.ctx.db, "bo") == 1
    assert api.client.get("/api/runs", headers=headers).status_code == 401
