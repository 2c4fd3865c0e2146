"""System incidents (``notify.system``): announced once by e-mail and on Teams, reminded,
resolved with one recovery; listed for the bell. Real aiosmtpd server, real webhook
endpoint, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from sqlalchemy import select

from fastflow import accounts, notify
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import SystemIncident, utcnow
from fastflow.notify.models import NotificationDelivery
from fastflow.notify.system import open_incidents, raise_incident, resolve_incident
from fastflow.server import create_app
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.harness.ports import free_port
from tests.harness.serve import fastflow_serve
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint
from tests.seeding import seed_run
from tests.web.test_ui import PASSWORD as UI_PASSWORD
from tests.web.test_ui import Server
from tests.web.test_ui_run_chart import admin_token, api, browse, shot

FAST = notify.DeliveryOptions(timeout_s=2, attempts=2, backoff_s=(0.05,), budget_s=5)
WAIT = 15.0
T0 = datetime(2026, 6, 7, 3, 0, tzinfo=UTC)
PASSWORD = "smtp-Pa55-system-incidents-9z"
BASE = "https://fastflow.example.com"


@dataclass
class World:
    ctx: Context
    smtp: SmtpCapture
    teams: TeamsEndpoint


def _notify_env(smtp_port: int, teams_url: str) -> dict[str, str]:
    return {
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com, audit@example.org",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": teams_url,
        "FASTFLOW_BASE_URL": BASE,
        "NOTIFY_REMINDER_HOURS": "23",
    }


@pytest.fixture
def world(
    ff_env: dict[str, str],
    smtp_server: SmtpCapture,
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    for key, value in _notify_env(smtp_server.port, teams_endpoint.url).items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    try:
        yield World(ctx, smtp_server, teams_endpoint)
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def _done(delivery: notify.Delivery) -> notify.Delivery:
    assert delivery.wait(WAIT), "the delivery did not finish"
    return delivery


def _kinds(ctx: Context) -> list[tuple[str, str, bool | None]]:
    with ctx.db.session() as s:
        rows = s.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id)).all()
        return [(r.kind, r.channel, r.ok) for r in rows]


def _card_text(post: Any) -> str:
    return json.dumps(post.json, ensure_ascii=False)


def test_one_message_per_incident_then_reminder_and_one_recovery(world: World) -> None:
    ctx = world.ctx
    title = "Archive integrity: 1 damaged object in fastflow-test"
    detail = "- MISSING pipeline-logs/etl/123/run.log (run 123): object does not exist"
    d = _done(raise_incident(ctx, "integrity", "archive", title, detail, now=T0, options=FAST))
    assert d.kind == notify.Kind.FAILURE
    (mail,) = world.smtp.messages
    assert mail.message["Subject"] == f"[fastflow] {title}"
    plain = _plain(mail)
    assert "MISSING pipeline-logs/etl/123/run.log" in plain and f"{BASE}/settings" in plain
    assert set(mail.rcpt_tos) == {"ops@example.com", "audit@example.org"}
    (card,) = world.teams.posts
    assert title in _card_text(card) and "MISSING pipeline-logs/etl/123/run.log" in _card_text(card)

    # still damaged an hour later: the detail is updated, nothing is sent
    later = "- MISSING a\n- CHANGED b"
    quiet = raise_incident(ctx, "integrity", "archive", title, later, now=T0 + timedelta(hours=1))
    assert quiet.done and quiet.kind is None
    (shown,) = open_incidents(ctx)
    assert shown["kind"] == "integrity" and shown["key"] == "archive"
    assert shown["detail"] == later and shown["since"] == T0.isoformat()
    assert shown["updated_at"] == (T0 + timedelta(hours=1)).isoformat()

    # NOTIFY_REMINDER_HOURS later: one reminder
    r = _done(
        raise_incident(ctx, "integrity", "archive", title, later, now=T0 + timedelta(hours=23))
    )
    assert r.kind == notify.Kind.REMINDER
    assert len(world.smtp.wait_for(2, WAIT)) == 2 and len(world.teams.wait_for(2, WAIT)) == 2
    assert world.smtp.messages[1].message["Subject"].startswith("[fastflow] Still open since")

    # resolved: one recovery, then nothing more
    done = "Every object intact."
    rec = _done(resolve_incident(ctx, "integrity", "archive", done, now=T0 + timedelta(days=1)))
    assert rec.kind == notify.Kind.RECOVERY
    mails, cards = world.smtp.wait_for(3, WAIT), world.teams.wait_for(3, WAIT)
    assert mails[2].message["Subject"] == f"[fastflow] Resolved: {title}"
    assert done in _plain(mails[2])
    assert '"color": "Good"' in _card_text(cards[2])
    assert open_incidents(ctx) == []
    again = resolve_incident(ctx, "integrity", "archive", now=T0 + timedelta(days=2))
    assert again.done and again.kind is None
    assert len(world.smtp.messages) == 3 and len(world.teams.posts) == 3

    # a new problem opens the incident anew
    _done(raise_incident(ctx, "integrity", "archive", title, detail, now=T0 + timedelta(days=3)))
    assert open_incidents(ctx)[0]["since"] == (T0 + timedelta(days=3)).isoformat()
    assert [k for k, _, _ in _kinds(ctx)] == [
        "system_failure",
        "system_failure",
        "system_reminder",
        "system_reminder",
        "system_recovery",
        "system_recovery",
        "system_failure",
        "system_failure",
    ]
    assert all(ok for _, _, ok in _kinds(ctx))


def test_incidents_are_listed_newest_first_and_by_kind(world: World) -> None:
    ctx = world.ctx
    raise_incident(ctx, "disk", "logs", "Disk full in 2 days", "free 1 GB", now=T0)
    raise_incident(ctx, "integrity", "archive", "Archive damaged", "x", now=T0 + timedelta(1))
    assert [i["kind"] for i in open_incidents(ctx)] == ["integrity", "disk"]
    assert [i["title"] for i in open_incidents(ctx, "disk")] == ["Disk full in 2 days"]
    assert set(open_incidents(ctx)[0]) == {"kind", "key", "title", "detail", "since", "updated_at"}
    resolve_incident(ctx, "disk", "logs", now=T0 + timedelta(2))
    assert [i["kind"] for i in open_incidents(ctx)] == ["integrity"]
    assert open_incidents(ctx, "disk") == []


def _race(ctx: Context, threads: int = 8) -> list[notify.Delivery]:
    barrier = threading.Barrier(threads)
    out: list[notify.Delivery] = []
    lock = threading.Lock()

    def go() -> None:
        barrier.wait()
        d = raise_incident(ctx, "integrity", "archive", "Archive damaged", "x", options=FAST)
        with lock:
            out.append(d)

    workers = [threading.Thread(target=go) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return out


def test_concurrent_raises_announce_once(world: World) -> None:
    deliveries = _race(world.ctx)
    for d in deliveries:
        _done(d)
    assert sum(d.kind is not None for d in deliveries) == 1
    assert len(world.smtp.messages) == 1 and len(world.teams.posts) == 1


def test_concurrent_raises_announce_once_on_postgres(
    pg_url: str,
    ff_env: dict[str, str],
    smtp_server: SmtpCapture,
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in _notify_env(smtp_server.port, teams_endpoint.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    try:
        deliveries = _race(ctx)
        for d in deliveries:
            _done(d)
        assert sum(d.kind is not None for d in deliveries) == 1
        assert len(smtp_server.messages) == 1 and len(teams_endpoint.posts) == 1
        with ctx.db.session() as s:
            assert len(s.scalars(select(SystemIncident)).all()) == 1
    finally:
        ctx.db.dispose()


def test_secrets_are_redacted_and_a_dead_channel_never_raises(
    ff_env: dict[str, str], teams_endpoint: TeamsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _notify_env(free_port(), teams_endpoint.url)  # nothing listens on the SMTP port
    env |= {"SMTP_USER": "fastflow", "SMTP_PASSWORD": PASSWORD, "SMTP_SECURITY": "ssl"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    try:
        d = raise_incident(ctx, "disk", "logs", f"title {PASSWORD}", f"detail {PASSWORD}")
        _done(d)
        results = {r.channel: r for r in d.results}
        assert not results["email"].ok and "refused" in (results["email"].error or "")
        assert results["teams"].ok
        (card,) = teams_endpoint.posts
        assert PASSWORD not in card.body.decode()
        (shown,) = open_incidents(ctx)
        assert PASSWORD not in json.dumps(shown) and "***" in shown["detail"]
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def test_api_lists_open_incidents_for_every_role(world: World) -> None:
    ctx = world.ctx
    client = TestClient(create_app(ctx, schedule=False))
    viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}
    assert client.get("/api/settings/system-incidents").status_code == 401
    res = client.get("/api/settings/system-incidents", headers=viewer)
    assert res.status_code == 200 and res.json() == {"incidents": []}
    _done(raise_incident(ctx, "integrity", "archive", "Archive damaged", "MISSING k", now=T0))
    from fastflow.db import cache

    cache.invalidate()
    (incident,) = client.get("/api/settings/system-incidents", headers=viewer).json()["incidents"]
    assert incident == {
        "kind": "integrity",
        "key": "archive",
        "title": "Archive damaged",
        "detail": "MISSING k",
        "since": T0.isoformat(),
        "updated_at": T0.isoformat(),
    }


# --- the bell and the Settings page in a real headless Chromium --------------------------


def test_the_bell_shows_an_integrity_incident_and_its_recovery(
    ff_env: dict[str, str], s3: S3Env
) -> None:
    """A verification that finds an object deleted behind fastflow's back puts the
    integrity incident in the bell (with a toast); the Bucket panel shows the bucket's
    checks and the last verification; once the object is back, a later verification
    resolves the incident and a "Resolved" toast says so."""
    ctx = bootstrap(load_settings())
    try:
        runs = [seed_run(ctx, "etl", utcnow() - timedelta(days=10, minutes=i)) for i in range(3)]
    finally:
        ctx.db.dispose()
    env = {**os.environ, **ff_env, **s3.env(), "LOG_RETENTION_DAYS": "1"}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=UI_PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    key = f"pipeline-logs/etl/{runs[-1].id}/run.log"  # the oldest: archived
    client = s3.client()

    def verify(expected: int, server: Server) -> None:
        done = run_cli("archive", "verify", "--record", env=env)
        assert done.returncode == expected, done.stdout + done.stderr
        # the server's read cache shows another process's change within a second: the page
        # is reloaded once the API has it (a reload before showed the old state at times)
        deadline = time.monotonic() + 10
        while len(api(server, "GET", "/api/settings/system-incidents").json()["incidents"]) != (
            1 if expected else 0
        ):
            assert time.monotonic() < deadline, "the server never showed the verification"
            time.sleep(0.05)

    def body(page: Any, server: Server) -> None:
        summary = api(server, "POST", "/api/settings/cleanup/force").json()
        assert summary["archived_runs"] >= 2  # the newest success may be kept
        polled = page.locator("#notif-list[data-polls]")
        items = page.locator("#notif-list li[data-kind=system]")
        expect(polled).to_have_count(1)
        expect(items).to_have_count(0)

        stored = client.get_object(Bucket=s3.bucket, Key=key)
        data, metadata = stored["Body"].read(), stored["Metadata"]
        client.delete_object(Bucket=s3.bucket, Key=key)
        verify(1, server)
        page.reload()
        title = "Archive integrity: 1 damaged object in fastflow-test"
        expect(page.locator(".toast.error")).to_contain_text(title)
        expect(page.locator("#bell-badge")).to_have_text("1")
        page.click("#bell")
        expect(items).to_have_count(1)
        expect(items).to_contain_text(title)
        shot(page, "bell-integrity")

        rows = page.locator("#bucket-table tbody tr")
        expect(rows).to_have_count(5)
        expect(page.locator("#bucket-table tr[data-check=versioning]")).to_contain_text("warning")
        expect(page.locator("#bucket-table tr[data-check=lifecycle]")).to_contain_text("ok")
        expect(page.locator("#bucket-verified")).to_contain_text("1 damaged")
        shot(page, "settings-bucket")

        client.put_object(Bucket=s3.bucket, Key=key, Body=data, Metadata=metadata)
        verify(0, server)
        page.reload()
        expect(page.locator(".toast.ok")).to_contain_text(f"Resolved: {title}")
        expect(items).to_have_count(0)
        expect(page.locator("#bell-badge")).to_be_hidden()
        expect(page.locator("#bucket-verified")).to_contain_text("every object intact")
        page.reload()  # said once
        expect(polled).to_have_count(1)
        expect(page.locator(".toast")).to_have_count(0)

    with fastflow_serve(env) as url:
        browse(Server(url, env), body, start="/settings")


def _plain(mail: Any) -> str:
    """The plain-text part of a captured e-mail."""
    part = mail.message.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()
    return text
