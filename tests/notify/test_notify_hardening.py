"""Notification hardening (issue 13): SMTP credentials stay with their host and never
travel without TLS unless explicitly allowed; Teams errors show a status and an error
class, never the remote server's answer. Real aiosmtpd servers, a real webhook endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts, notify
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.server import create_app
from tests.harness.ports import free_port
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint

PASSWORD = "smtp-Pa55word-for-A-9q"
FAST = notify.DeliveryOptions(timeout_s=2, attempts=2, backoff_s=(0.05,), budget_s=5)
SmtpFactory = Callable[..., SmtpCapture]


class Api:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = TestClient(create_app(ctx, schedule=False))
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'a', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        res = self.client.put("/api/settings", json=body, headers=self.admin)
        assert res.status_code == 200, res.text
        data: dict[str, Any] = res.json()
        return data

    def send_test_mail(self) -> dict[str, Any]:
        res = self.client.post("/api/settings/notifications/test?channel=email", headers=self.admin)
        assert res.status_code == 200, res.text
        (result,) = res.json()
        assert isinstance(result, dict)
        return result


# --- SMTP credentials stay with their host ------------------------------------------------


@pytest.fixture
def two_hosts(
    ff_env: dict[str, str], smtp_factory: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Api, SmtpCapture, SmtpCapture]]:
    """Host A (``127.0.0.1``) needs the password; host B (``localhost``) would accept the
    same login if it were sent, but does not need one: what B receives shows whether the
    password travelled."""
    a = smtp_factory(username="fastflow", password=PASSWORD, auth_required=True)
    b = smtp_factory(username="fastflow", password=PASSWORD)
    env = {
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(a.port),
        "SMTP_SECURITY": "none",
        "SMTP_ALLOW_PLAINTEXT_AUTH": "true",  # the test servers have no TLS
        "SMTP_USER": "fastflow",
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    yield Api(ctx), a, b
    ctx.db.dispose()


def test_changing_the_host_never_sends_the_old_password_there(
    two_hosts: tuple[Api, SmtpCapture, SmtpCapture],
) -> None:
    api, a, b = two_hosts
    assert api.send_test_mail()["ok"] is True
    assert a.wait_for(1)[0].auth_login == "fastflow"
    view = api.put({"smtp_host": "localhost", "smtp_port": b.port})
    assert any("password" in n and "again" in n for n in view["notices"]), view["notices"]
    assert view["smtp_password_configured"] is False
    assert view["sources"]["smtp_password"] == "ui"
    assert api.send_test_mail()["ok"] is True
    (mail,) = b.wait_for(1)
    assert mail.auth_login is None  # no AUTH: the password of host A never reached host B
    # entered again for the new host: used there
    view = api.put({"smtp_password": PASSWORD})
    assert view["smtp_password_configured"] is True and view["notices"] == []
    assert api.send_test_mail()["ok"] is True
    assert b.wait_for(2)[1].auth_login == "fastflow"
    # back to the environment's host: the environment's password comes back with it
    view = api.put({"smtp_host": None, "smtp_port": None})
    assert view["smtp_password_configured"] is True
    assert view["sources"]["smtp_password"] == "environment"
    assert api.send_test_mail()["ok"] is True
    assert a.wait_for(2)[1].auth_login == "fastflow"


def test_host_and_password_in_one_request_keep_the_password(
    two_hosts: tuple[Api, SmtpCapture, SmtpCapture],
) -> None:
    api, _, b = two_hosts
    view = api.put({"smtp_host": "localhost", "smtp_port": b.port, "smtp_password": PASSWORD})
    assert view["notices"] == [] and view["smtp_password_configured"] is True
    assert api.send_test_mail()["ok"] is True
    assert b.wait_for(1)[0].auth_login == "fastflow"
    # an empty password field means "keep", so it does not count as given again
    view = api.put({"smtp_host": "mail.example.org", "smtp_password": ""})
    assert view["smtp_password_configured"] is False and view["notices"]


def test_the_environment_password_is_not_reset_onto_another_host(
    two_hosts: tuple[Api, SmtpCapture, SmtpCapture],
) -> None:
    api, _, b = two_hosts
    api.put({"smtp_host": "localhost", "smtp_port": b.port})
    res = api.client.put("/api/settings", json={"smtp_password": None}, headers=api.admin)
    assert res.status_code == 422 and "SMTP_HOST" in res.json()["detail"]
    assert PASSWORD not in res.text


# --- no credentials without TLS unless explicitly allowed -----------------------------------


def _mail_ctx(app: Context, server: SmtpCapture, **overrides: Any) -> Context:
    data = app.settings.model_dump()
    data.update(
        email_enabled=True,
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_user="fastflow",
        smtp_password=PASSWORD,
        smtp_from="fastflow@example.com",
        email_recipients=["ops@example.com"],
    )
    data.update(overrides)
    return Context(settings=load_settings(**data), db=app.db)


@pytest.mark.parametrize(
    "overrides",
    [
        {"smtp_security": "none"},  # plain, but not allowed
        {"smtp_security": None},  # plain by port, even when allowed
        {"smtp_security": None, "smtp_allow_plaintext_auth": True},
    ],
)
def test_no_password_in_clear_unless_explicitly_allowed(
    app: Context, smtp_factory: SmtpFactory, overrides: dict[str, Any]
) -> None:
    server = smtp_factory(username="fastflow", password=PASSWORD)  # AUTH offered, optional
    (result,) = notify.send_test(
        _mail_ctx(app, server, **overrides), email=True, teams=False, options=FAST
    )
    assert not result.ok and result.attempts == 0  # refused before connecting
    assert result.error is not None and "without TLS" in result.error
    assert "SMTP_ALLOW_PLAINTEXT_AUTH" in result.error and PASSWORD not in result.error
    assert server.messages == []


def test_password_in_clear_with_security_none_and_the_explicit_switch(
    app: Context, smtp_factory: SmtpFactory
) -> None:
    server = smtp_factory(username="fastflow", password=PASSWORD, auth_required=True)
    ctx = _mail_ctx(app, server, smtp_security="none", smtp_allow_plaintext_auth=True)
    (result,) = notify.send_test(ctx, email=True, teams=False, options=FAST)
    assert result.ok, result.error
    assert server.wait_for(1)[0].auth_login == "fastflow"


def test_plaintext_switch_is_read_from_the_environment(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().smtp_allow_plaintext_auth is False
    monkeypatch.setenv("SMTP_ALLOW_PLAINTEXT_AUTH", "true")
    assert load_settings().smtp_allow_plaintext_auth is True


# --- Teams: a status and an error class, never the remote answer -----------------------------


@pytest.fixture
def teams_api(
    ff_env: dict[str, str], teams_endpoint: TeamsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    monkeypatch.setenv("TEAMS_ENABLED", "true")
    monkeypatch.setenv("TEAMS_WEBHOOK_URL", teams_endpoint.url)
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    teams_endpoint.release()
    ctx.db.dispose()


def _viewer_error(api: Api) -> str:
    res = api.client.get("/api/settings", headers=api.viewer)
    error = res.json()["notifications"]["teams"]["error"]
    assert isinstance(error, str)
    return error


@pytest.mark.parametrize("status", [400, 500])
def test_teams_error_bodies_never_reach_the_settings(
    teams_api: Api, teams_endpoint: TeamsEndpoint, status: int
) -> None:
    remote = "<html>internal error: db password hunter2 at 10.9.8.7</html>"
    teams_endpoint.respond(status, body=remote)
    (result,) = notify.send_test(teams_api.ctx, email=False, teams=True, options=FAST)
    assert not result.ok and result.error is not None
    shown = _viewer_error(teams_api)
    assert f"HTTP {status}" in shown
    for leaked in ("hunter2", "internal error", "10.9.8.7", "<html>", "SECRET-TOKEN"):
        assert leaked not in shown and leaked not in result.error


def test_teams_network_errors_are_shown_as_classes(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, teams_endpoint: TeamsEndpoint
) -> None:
    monkeypatch.setenv("TEAMS_ENABLED", "true")
    monkeypatch.setenv("TEAMS_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/hook/x/SECRET-TOKEN")
    ctx = bootstrap(load_settings())
    api = Api(ctx)
    (result,) = notify.send_test(ctx, email=False, teams=True, options=FAST)
    assert result.error is not None and result.error.endswith("connection refused (2 attempts)")
    assert "connection refused" in _viewer_error(api) and "Errno" not in _viewer_error(api)
    ctx.db.dispose()
    monkeypatch.setenv("TEAMS_WEBHOOK_URL", teams_endpoint.url)
    ctx = bootstrap(load_settings())
    teams_endpoint.hang()
    slow = notify.DeliveryOptions(timeout_s=0.3, attempts=1, backoff_s=(0.05,), budget_s=2)
    (result,) = notify.send_test(ctx, email=False, teams=True, options=slow)
    teams_endpoint.release()
    assert result.error is not None and "timed out" in result.error
    ctx.db.dispose()


def test_changing_only_the_port_never_sends_the_password_there(
    two_hosts: tuple[Api, SmtpCapture, SmtpCapture], smtp_factory: SmtpFactory
) -> None:
    """An outside audit: the password stayed when only ``smtp_port`` changed, so it went
    to whatever listens on that port of the same host."""
    api, a, _ = two_hosts
    other = smtp_factory(username="fastflow", password=PASSWORD)  # 127.0.0.1 too
    view = api.put({"smtp_port": other.port})
    assert any("SMTP_PORT" in n and "cleared" in n for n in view["notices"]), view["notices"]
    assert view["smtp_password_configured"] is False
    assert api.send_test_mail()["ok"] is True
    assert other.wait_for(1)[0].auth_login is None  # the password did not travel
    view = api.put({"smtp_port": None})  # the environment's port: its password again
    assert view["smtp_password_configured"] is True
    assert view["sources"]["smtp_password"] == "environment"
    assert api.send_test_mail()["ok"] is True
    assert a.wait_for(1)[0].auth_login == "fastflow"
    api.put({"smtp_port": other.port})
    res = api.client.put("/api/settings", json={"smtp_password": None}, headers=api.admin)
    assert res.status_code == 422 and "SMTP_PORT" in res.json()["detail"]
    assert PASSWORD not in res.text
