"""Settings hardening (issue 13, part 1): bad values are 4xx (API) or exit 2 (environment),
never a 500; request bodies are capped; only the fields given become overrides, ``null``
removes any override, ``sources`` says where each value comes from; the S3 connection test
tests the typed values; a changed cleanup schedule takes effect at once; outbound URLs
never point at link-local or metadata addresses."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import SettingOverride
from fastflow.lifecycle.scheduler import CleanupScheduler, next_pass_at, settings_changed
from fastflow.server import create_app
from tests.conftest import run_cli, wait_until
from tests.harness.fixtures import S3Env
from tests.harness.ports import free_port
from tests.harness.serve import fastflow_serve


class Api:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = TestClient(create_app(ctx, schedule=False))
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'a', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}

    def put(self, body: Any) -> Any:  # the TestClient's response (httpx2's, or httpx's)
        return self.client.put("/api/settings", json=body, headers=self.admin)

    def view(self) -> dict[str, Any]:
        res = self.client.get("/api/settings", headers=self.viewer)
        assert res.status_code == 200, res.text
        data: dict[str, Any] = res.json()
        return data

    def stored(self) -> set[str]:
        with self.ctx.db.session() as s:
            return {row.key for row in s.scalars(select(SettingOverride))}


@pytest.fixture
def api(ff_env: dict[str, str]) -> Iterator[Api]:
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    ctx.db.dispose()


@pytest.fixture
def env_api(ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """Some settings come from the environment."""
    for key, value in {
        "CLEANUP_SCHEDULE": "30 3 * * *",
        "SMTP_PORT": "2525",
        "S3_REGION": "eu-central-1",
        "S3_PREFIX": "audit",
        "EMAIL_ENABLED": "true",
        "S3_USE_PATH_STYLE": "false",
        "SMTP_PASSWORD": "env-smtp-Pa55",
    }.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    ctx.db.dispose()


# --- bad values: 422 naming the variable, nothing stored ---------------------------------

BAD_VALUES = [
    ("email_recipients", 5),
    ("email_recipients", [1, 2]),
    ("email_recipients", {"a": "b"}),
    ("s3_region", "\u202e\u0000evil"),
    ("s3_region", "EU-West-1"),
    ("s3_region", "a" * 64),
    ("s3_bucket", "My_Bucket"),
    ("s3_bucket", "ab"),
    ("s3_bucket", "b" * 64),
    ("s3_bucket", "192.168.1.10"),
    ("s3_bucket", "-logs"),
    ("s3_bucket", "logs..2026"),
    ("smtp_host", "mail.example.org\r\nRCPT TO:<x@evil>"),
    ("smtp_host", "mail\x00.example.org"),
    ("smtp_host", "mail.\u202eexample.org"),
    ("smtp_host", "a" * 254),
    # outside audit: a schedule that never fires answered 500, was stored, and the
    # server could not start again; ``true`` was stored as 1 run kept; NUL in a key
    ("cleanup_schedule", "0 0 31 2 *"),
    ("cleanup_schedule", "0 0 30 2 *"),
    ("log_retention_runs", True),
    ("log_max_size_mb", False),
    ("s3_access_key", "bad\u0000KEY"),
    ("s3_prefix", "logs/\x1b[2J"),
    ("s3_prefix", "p" * 513),  # outside audit: 900 KiB were stored and served to viewers
    ("s3_prefix", "ä" * 257),  # 514 bytes
    # outside audit: a 900,000-character sender was stored and served; an endpoint with
    # a query string was stored, then every request to it failed
    ("smtp_from", "a" * 250 + "@example.org"),
    ("email_recipients", ["b" * 250 + "@example.org"]),
    ("email_recipients", [f"ops{i}@example.org" for i in range(101)]),
    ("s3_endpoint_url", "http://127.0.0.1:9000/?x=1"),
    ("s3_endpoint_url", "http://127.0.0.1:9000/#frag"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_put_refuses_bad_values_with_one_clear_line(api: Api, name: str, value: Any) -> None:
    res = api.put({name: value})
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert name.upper() in detail and "\n" not in detail and "\r" not in detail
    assert "\u202e" not in detail and "\x00" not in detail and len(detail) < 400
    assert name not in api.stored()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_REGION", "eu west 1"),
        ("S3_BUCKET", "Logs_2026"),
        ("SMTP_HOST", "mail.\u202eexample.org"),
        ("EMAIL_RECIPIENTS", "ops@example.com, not-an-address"),
    ],
)
def test_invalid_environment_value_exits_2_naming_the_variable(
    ff_env: dict[str, str], name: str, value: str
) -> None:
    res = run_cli("runs", env={name: value})
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"fastflow: invalid configuration: {name}=") and "\u202e" not in line


def test_good_values_are_accepted(api: Api) -> None:
    res = api.put(
        {
            "s3_region": "us-gov-west-1",
            "s3_bucket": "fastflow.logs-2026",
            "smtp_host": "mail.example.org",
            "email_recipients": ["ops@example.com", "oncall@example.net"],
        }
    )
    assert res.status_code == 200, res.text
    view = res.json()
    assert view["s3_bucket"] == "fastflow.logs-2026" and view["s3_region"] == "us-gov-west-1"
    assert view["email_recipients"] == ["ops@example.com", "oncall@example.net"]


def test_a_stored_value_that_is_no_longer_valid_does_not_break_anything(
    api: Api, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older version stored ``s3_region`` unchecked; every request then failed."""
    with api.ctx.db.session() as s:
        s.add(SettingOverride(key="s3_region", value=json.dumps("\u202e\u0000evil"), encrypted=0))
        # stored by the version before: valid syntax, but it never fires
        s.add(SettingOverride(key="cleanup_schedule", value=json.dumps("0 0 31 2 *"), encrypted=0))
    ctx = bootstrap(load_settings())  # starts
    assert ctx.settings.s3_region == "us-east-1"
    assert ctx.settings.cleanup_schedule == "0 2 * * *"
    api2 = Api(ctx)
    assert api2.view()["s3_region"] == "us-east-1"
    res = api2.client.post("/api/settings/s3/test", headers=api2.admin)
    assert res.status_code == 200 and res.json()["ok"] is False
    ctx.db.dispose()


# --- the body cap -----------------------------------------------------------------------


def test_request_bodies_are_capped_at_one_mib(api: Api) -> None:
    huge = {"s3_bucket": "a" * (50 * 1024 * 1024)}
    res = api.put(huge)
    assert res.status_code == 413 and "1 MiB" in res.json()["detail"]
    assert "s3_bucket" not in api.stored()

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"s3_bucket": "'
        for _ in range(2048):
            yield b"a" * 1024
        yield b'"}'

    res = api.client.put(
        "/api/settings",
        content=chunks(),
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert res.status_code == 413 and "1 MiB" in res.json()["detail"]
    # the web UI's forms too
    res = api.client.post("/login", data={"username": "x" * (2 * 1024 * 1024), "password": "p"})
    assert res.status_code == 413
    # a body below the cap is fine
    assert api.put({"s3_prefix": "p" * 500}).status_code == 200  # (at most 512 bytes)


# --- only changed fields; null removes any override; sources ------------------------------


def test_only_the_given_fields_become_overrides(env_api: Api) -> None:
    api = env_api
    res = api.put({"log_retention_runs": 3})
    assert res.status_code == 200, res.text
    assert api.stored() == {"log_retention_runs"}
    view = res.json()
    assert view["overridden"] == ["log_retention_runs"]
    sources = view["sources"]
    assert sources["log_retention_runs"] == "ui"
    assert sources["cleanup_schedule"] == "environment" and sources["smtp_port"] == "environment"
    assert sources["log_retention_days"] == "default" and sources["s3_bucket"] == "default"
    assert sources["smtp_password"] == "environment" and view["smtp_password_configured"]
    assert sources["s3_secret_access_key"] == "default"
    assert set(sources) >= {"teams_webhook_url", "s3_access_key", "email_recipients"}


def test_a_later_change_of_the_environment_takes_effect(
    env_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_api.put({"log_retention_runs": 3})
    monkeypatch.setenv("CLEANUP_SCHEDULE", "15 4 * * *")
    restarted = bootstrap(load_settings())
    assert restarted.settings.cleanup_schedule == "15 4 * * *"
    assert restarted.settings.log_retention_runs == 3
    restarted.db.dispose()


@pytest.mark.parametrize(
    ("name", "value", "env_value"),
    [
        ("smtp_port", 25, 2525),
        ("cleanup_schedule", "0 * * * *", "30 3 * * *"),
        ("s3_region", "us-west-2", "eu-central-1"),
        ("s3_prefix", "elsewhere", "audit"),
        ("s3_use_path_style", True, False),
        ("email_enabled", False, True),
        ("s3_backup_enabled", True, False),
        ("teams_enabled", True, False),
        ("log_retention_days", 7, None),
    ],
)
def test_null_removes_the_override_of_every_field(
    env_api: Api, name: str, value: Any, env_value: Any
) -> None:
    api = env_api
    assert api.put({name: value}).json()[name] == value
    assert api.view()["sources"][name] == "ui"
    res = api.put({name: None})
    assert res.status_code == 200, res.text
    assert res.json()[name] == env_value
    assert api.view()["sources"][name] in ("environment", "default")
    assert name not in api.stored() and name not in api.view()["overridden"]


def test_null_is_accepted_for_every_field_the_settings_show(env_api: Api) -> None:
    """A client may send back ``null`` for every field ``GET /api/settings`` lists: for
    the two set only in the environment there is no override to remove (it answered
    422 "cannot be changed here"); a value for them is still refused."""
    api = env_api
    shown = api.view()
    for name in ("smtp_allow_plaintext_auth", "fastflow_base_url"):
        assert name in shown
        res = api.put({name: None})
        assert res.status_code == 200, res.text
        assert api.view()[name] == shown[name] and name not in api.stored()
        assert api.put({name: "x"}).status_code == 422
    res = api.put({"s3_prefix": "p" * 512})
    assert res.status_code == 200, res.text


def test_secrets_can_be_reset_and_show_their_source(env_api: Api) -> None:
    api = env_api
    api.put({"s3_secret_access_key": "ui-s3-secret-77"})
    view = api.view()
    assert view["sources"]["s3_secret_access_key"] == "ui"
    assert view["s3_secret_access_key_configured"] is True
    assert "ui-s3-secret-77" not in json.dumps(view)
    api.put({"s3_secret_access_key": ""})  # empty: keep
    assert api.view()["s3_secret_access_key_configured"] is True
    api.put({"s3_secret_access_key": None})  # null: back to the environment (unset)
    view = api.view()
    assert view["s3_secret_access_key_configured"] is False
    assert view["sources"]["s3_secret_access_key"] == "default"


# --- the S3 connection test tests what is typed ---------------------------------------------


@pytest.fixture
def s3_api(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    yield Api(ctx)
    ctx.db.dispose()


def test_s3_test_uses_the_typed_values_without_saving_them(s3_api: Api, s3: S3Env) -> None:
    api = s3_api
    saved = api.client.post("/api/settings/s3/test", headers=api.admin).json()
    assert saved["ok"] is True
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = api.client.post(
        "/api/settings/s3/test", json={"s3_endpoint_url": nowhere}, headers=api.admin
    )
    assert res.status_code == 200
    assert res.json()["ok"] is False and "connection refused" in res.json()["error"]
    view = api.view()
    assert view["s3_endpoint_url"] == s3.endpoint_url and "s3_endpoint_url" not in api.stored()
    assert view["last_s3_test"]["ok"] is True  # only a test of the saved settings is kept
    wrong = api.client.post(
        "/api/settings/s3/test", json={"s3_bucket": "no-such-bucket-here"}, headers=api.admin
    ).json()
    assert wrong["ok"] is False and "no-such-bucket-here" in wrong["error"]
    # an empty secret means the stored one; typed unchanged values test like the saved ones
    same = api.client.post(
        "/api/settings/s3/test",
        json={"s3_endpoint_url": s3.endpoint_url, "s3_secret_access_key": ""},
        headers=api.admin,
    ).json()
    assert same["ok"] is True


def test_s3_test_with_unsaved_values_in_an_unconfigured_install(api: Api, s3: S3Env) -> None:
    typed = {
        "s3_endpoint_url": s3.endpoint_url,
        "s3_bucket": s3.bucket,
        "s3_access_key": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
        "s3_region": s3.region,
    }
    res = api.client.post("/api/settings/s3/test", json=typed, headers=api.admin)
    assert res.status_code == 200 and res.json() == {**res.json(), "ok": True, "error": None}
    assert api.stored() == set() and api.view()["s3_configured"] is False
    assert api.client.post("/api/settings/s3/test", headers=api.admin).json()["ok"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"s3_region": "\u202e\u0000evil"},
        {"s3_bucket": "Not_A_Bucket"},
        {"s3_endpoint_url": "http://169.254.169.254"},
        {"smtp_host": "mail.example.org"},  # not an S3 setting
        {"database_url": "sqlite://"},
    ],
)
def test_s3_test_validates_the_typed_values_like_put(api: Api, body: dict[str, Any]) -> None:
    res = api.client.post("/api/settings/s3/test", json=body, headers=api.admin)
    assert res.status_code == 422, res.text
    assert (
        api.client.post("/api/settings/s3/test", json=body, headers=api.viewer).status_code == 403
    )


# --- outbound URLs --------------------------------------------------------------------------

METADATA_URLS = [
    "http://169.254.169.254",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]",
    "http://[fe80::1]:9000",
    "http://100.100.100.200",
    "http://metadata.google.internal",
    "http://METADATA.google.internal.",
    "http://2852039166",  # 169.254.169.254 as one number
    "http://[::ffff:169.254.169.254]",
]


@pytest.mark.parametrize("url", METADATA_URLS)
def test_s3_endpoint_refuses_link_local_and_metadata_addresses(api: Api, url: str) -> None:
    res = api.put({"s3_endpoint_url": url})
    assert res.status_code == 422 and "S3_ENDPOINT_URL" in res.json()["detail"]
    assert "metadata" in res.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000",
        "http://localhost:9000",
        "http://[::1]:9000",
        "http://10.0.0.5:9000",
        "http://192.168.1.20",
        "https://minio.internal.example",
    ],
)
def test_s3_endpoint_keeps_loopback_and_private_addresses(api: Api, url: str) -> None:
    assert api.put({"s3_endpoint_url": url}).status_code == 200


def test_metadata_addresses_are_refused_from_the_environment_too(ff_env: dict[str, str]) -> None:
    for name, url in (
        ("S3_ENDPOINT_URL", "http://[fd00:ec2::254]"),
        ("TEAMS_WEBHOOK_URL", "http://169.254.169.254/webhook/token-Zz9"),
    ):
        res = run_cli("runs", env={name: url})
        assert res.returncode == 2, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert name in line and "metadata" in line and "token-Zz9" not in line


def test_teams_webhook_refuses_metadata_addresses_through_the_api(api: Api) -> None:
    res = api.put({"teams_webhook_url": "https://metadata.google.internal/hook/secret-Yy8"})
    assert res.status_code == 422 and "TEAMS_WEBHOOK_URL" in res.json()["detail"]
    assert "secret-Yy8" not in res.text


# --- a changed cleanup schedule takes effect at once in a running server ----------------------


def test_a_changed_schedule_takes_effect_at_once_in_a_running_server(
    ff_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **ff_env, "CLEANUP_SCHEDULE": "0 2 * * *"}
    token = run_cli("token", "create", "--name", "t", "--role", "admin", env=env).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log, fastflow_serve(env, stderr=log) as url:
        before = httpx.get(url + "/api/settings", headers=headers).json()
        first = datetime.fromisoformat(before["next_cleanup_at"])
        assert (first.hour, first.minute) == (2, 0)
        put = httpx.put(
            url + "/api/settings", json={"cleanup_schedule": "* * * * *"}, headers=headers
        )
        assert put.status_code == 200, put.text
        after = datetime.fromisoformat(put.json()["next_cleanup_at"])
        now = datetime.now().astimezone()
        assert now - timedelta(seconds=5) < after <= now + timedelta(seconds=61)
        shown = after.isoformat(timespec="seconds")

        def logged() -> bool:
            return f"next cleanup pass at {shown}" in log_path.read_text()

        wait_until(logged, 10, "the log line with the new next time")
        # and back: the reset schedule is planned at once too
        back = httpx.put(url + "/api/settings", json={"cleanup_schedule": None}, headers=headers)
        assert datetime.fromisoformat(back.json()["next_cleanup_at"]) == first
    text = log_path.read_text()
    assert re.search(r"next cleanup pass at \S+ \(\* \* \* \* \*\)", text)


def test_the_scheduler_runs_a_pass_soon_after_the_schedule_changed(app: Context) -> None:
    """The waiting scheduler thread wakes up for the new schedule (a clock that says a
    minute boundary is 50 ms away; the old schedule would wait until 02:00)."""
    ctx = Context(
        settings=app.settings.model_copy(update={"cleanup_schedule": "0 2 * * *"}), db=app.db
    )
    base = datetime.now().astimezone().replace(hour=12, second=59, microsecond=950_000)
    ran = threading.Event()
    scheduler = CleanupScheduler(ctx, on_pass=lambda _: ran.set(), clock=lambda: base)
    scheduler.start()
    try:
        assert next_pass_at(ctx) == base.replace(hour=2, minute=0, second=0, microsecond=0) + (
            timedelta(days=1)
        )
        ctx.settings = ctx.settings.model_copy(update={"cleanup_schedule": "* * * * *"})
        settings_changed(ctx)
        assert next_pass_at(ctx) == base + timedelta(milliseconds=50)
        assert ran.wait(30), "no pass ran after the schedule changed"
    finally:
        scheduler.stop()
    assert next_pass_at(ctx) is None  # stopped: nothing scheduled here any more


def test_an_s3_endpoint_with_credentials_is_refused_without_showing_them(api: Api) -> None:
    """Found by an outside audit: such an endpoint was stored and returned to viewers."""
    res = api.client.put(
        "/api/settings",
        json={"s3_endpoint_url": "http://AKIA:SECRETS3INURL@127.0.0.1:9/"},
        headers=api.admin,
    )
    assert res.status_code == 422 and "S3_ACCESS_KEY" in res.text, res.text
    assert "SECRETS3INURL" not in res.text
    shown = api.client.get("/api/settings", headers=api.viewer)
    assert shown.status_code == 200 and "SECRETS3INURL" not in shown.text


@pytest.mark.parametrize("field", ["smtp_password", "s3_secret_access_key", "smtp_user"])
def test_a_lone_surrogate_in_a_credential_is_refused_not_stored(api: Api, field: str) -> None:
    """An outside audit: ``{"smtp_password": "pw\\ud800"}`` was stored and failed only when
    the first mail was sent."""
    body = '{"' + field + '": "hunter\\ud800pw"}'
    headers = {"Content-Type": "application/json", **api.admin}
    res = api.client.put("/api/settings", content=body.encode(), headers=headers)
    assert res.status_code == 422, res.text
    assert "hunter" not in res.text
    assert field not in api.stored()
