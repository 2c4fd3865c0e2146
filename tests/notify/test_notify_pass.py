"""Notifications after real cleanup passes: real S3 with faults, real SMTP, real webhook."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from fastflow import notify
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.engine import Database
from fastflow.lifecycle.cleanup import PassSummary, run_pass
from fastflow.notify import records
from fastflow.notify.models import NotificationDelivery, NotificationIncident
from tests.conftest import cli_process, wait_until
from tests.harness.fixtures import S3Env
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint
from tests.seeding import NOW, seed_run, seed_series

SMTP_PASSWORD = "smtp-Pa55word-7f3k"
TOKEN = "SECRET-TOKEN"  # the secret path part of ``TeamsEndpoint.url``
RECIPIENTS = ["ops@example.com", "backup@example.org", "oncall@example.net"]
BASE = "https://fastflow.example.com"
FAST = notify.DeliveryOptions(
    timeout_s=2, attempts=3, backoff_s=(0.05,), max_retry_after_s=2, budget_s=6
)
WAIT = 15.0  # generous upper bound for a delivery (they end within FAST.budget_s)


@dataclass
class World:
    ctx: Context
    s3: S3Env
    smtp: SmtpCapture
    teams: TeamsEndpoint

    def cycle(
        self, *, at: datetime | None = None, options: notify.DeliveryOptions = FAST
    ) -> tuple[PassSummary, notify.Delivery]:
        """One cleanup pass, then its notification, delivered before returning."""
        summary = run_pass(self.ctx, "test", now=NOW)
        delivery = notify.after_pass(self.ctx, summary, now=at, options=options)
        assert delivery.wait(WAIT), "delivery did not finish"
        return summary, delivery

    def mails(self) -> list[Any]:
        return self.smtp.messages

    def cards(self) -> list[Any]:
        return self.teams.posts


@pytest.fixture
def world(
    ff_env: dict[str, str],
    s3: S3Env,
    smtp_factory: Callable[..., SmtpCapture],
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    smtp = smtp_factory(username="fastflow", password=SMTP_PASSWORD, auth_required=True)
    env = {
        **s3.env(),
        "S3_CONNECT_TIMEOUT": "2",
        "S3_READ_TIMEOUT": "2",
        "LOG_RETENTION_RUNS": "1",
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "SMTP_ALLOW_PLAINTEXT_AUTH": "true",  # the test server has no TLS
        "SMTP_USER": "fastflow",
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": ", ".join(RECIPIENTS),
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": teams_endpoint.url,
        "FASTFLOW_BASE_URL": BASE,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    try:
        yield World(ctx, s3, smtp, teams_endpoint)
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def _mail_text(mail: Any) -> tuple[str, str]:
    plain, html = mail.message.get_body(("plain",)), mail.message.get_body(("html",))
    return plain.get_content(), html.get_content()


def _card_text(post: Any) -> str:
    return json.dumps(post.json, ensure_ascii=False)


def _deliveries(ctx: Context) -> list[NotificationDelivery]:
    with ctx.db.session() as s:
        return list(s.query(NotificationDelivery).order_by(NotificationDelivery.id))


# --- the incident lifecycle -------------------------------------------------------------


def test_failing_pass_sends_one_email_to_everyone_and_one_card(world: World) -> None:
    runs = seed_series(world.ctx, "etl", 4)
    failing = runs[:3]  # the newest one is kept by LOG_RETENTION_RUNS=1
    world.s3.proxy.fail(500)
    summary, delivery = world.cycle()
    assert summary.backup_failures == 3 and summary.deleted_runs == 0
    assert delivery.kind == notify.Kind.FAILURE
    assert sorted((r.channel, r.ok) for r in delivery.results) == [("email", True), ("teams", True)]

    (mail,) = world.mails()
    assert sorted(mail.rcpt_tos) == sorted(RECIPIENTS)
    assert mail.auth_login == "fastflow"
    assert mail.message["Subject"] == "[fastflow] S3 log backup failed: 3 runs"
    plain, html = _mail_text(mail)
    for run in failing:
        assert f"{BASE}/runs/{run.id}" in plain and f"{BASE}/runs/{run.id}" in html
    assert "S3 server error 500" in plain and f"{BASE}/settings" in plain
    assert str(runs[3].id) not in plain

    (post,) = world.cards()
    card = _card_text(post)
    assert post.json["type"] == "message"
    for run in failing:
        assert f"{BASE}/runs/{run.id}" in card
    assert '"Open run"' in card

    last = notify.last_results(world.ctx)
    assert last["email"]["ok"] is True and last["teams"]["ok"] is True
    assert last["email"]["kind"] == "failure" and last["email"]["at"]


def test_same_failures_again_send_nothing_and_a_grown_set_does(world: World) -> None:
    seed_series(world.ctx, "etl", 4)
    world.s3.proxy.fail(500)
    world.cycle()
    assert (len(world.mails()), len(world.cards())) == (1, 1)

    summary, delivery = world.cycle()
    assert summary.backup_failures == 3
    assert delivery.kind is None and delivery.done
    assert (len(world.mails()), len(world.cards())) == (1, 1)

    older = [seed_run(world.ctx, "etl", NOW - timedelta(days=40 + i)) for i in range(2)]
    summary, delivery = world.cycle()
    assert summary.backup_failures == 5 and delivery.kind == notify.Kind.GROWN
    assert (len(world.mails()), len(world.cards())) == (2, 2)
    mail = world.mails()[-1]
    assert mail.message["Subject"] == "[fastflow] S3 log backup failed: 5 runs (2 new)"
    plain, _ = _mail_text(mail)
    for run in older:
        assert f"run {run.id} [new]" in plain
    assert "(new)" in _card_text(world.cards()[-1])


def test_lasting_failure_reminds_once_a_day_with_its_start(world: World) -> None:
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    start = datetime(2026, 6, 1, 2, 0, 4, tzinfo=UTC)
    world.cycle(at=start)
    _, same_day = world.cycle(at=start + timedelta(hours=6))
    assert same_day.kind is None and len(world.mails()) == 1

    _, next_day = world.cycle(at=start + timedelta(hours=25))
    assert next_day.kind == notify.Kind.REMINDER
    assert (len(world.mails()), len(world.cards())) == (2, 2)
    mail = world.mails()[-1]
    assert mail.message["Subject"] == (
        "[fastflow] S3 log backup still failing since 2026-06-01 02:00 UTC: 2 runs"
    )
    assert "Still failing since 2026-06-01 02:00 UTC." in _mail_text(mail)[0]
    assert "still failing since 2026-06-01 02:00 UTC" in _card_text(world.cards()[-1])

    _, later = world.cycle(at=start + timedelta(hours=30))
    assert later.kind is None and len(world.mails()) == 2


def test_a_message_that_did_not_get_through_is_sent_again_on_its_channel(
    world: World,
) -> None:
    """Found by an outside audit: a failure digest the mail server refused was never sent
    again — the next failing passes with the same runs announced nothing for 23 h."""
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    world.smtp.reject(times=None)
    _, first = world.cycle()
    results = {r.channel: r.ok for r in first.results}
    assert first.kind == notify.Kind.FAILURE and results == {"email": False, "teams": True}
    assert (len(world.mails()), len(world.cards())) == (0, 1)

    _, still_refused = world.cycle()  # tried again, on e-mail only, and refused again
    assert still_refused.kind == notify.Kind.REMINDER
    assert [r.channel for r in still_refused.results] == ["email"]
    world.smtp.clear()
    _, resent = world.cycle()
    assert resent.kind == notify.Kind.REMINDER
    assert [(r.channel, r.ok) for r in resent.results] == [("email", True)]
    (mail,) = world.mails()
    assert mail.message["Subject"].startswith("[fastflow] S3 log backup still failing since")
    assert len(world.cards()) == 1  # Teams had it: not sent again

    _, quiet = world.cycle()  # delivered now: nothing new to say
    assert quiet.kind is None and (len(world.mails()), len(world.cards())) == (1, 1)


def test_a_message_whose_delivery_was_cut_short_is_sent_again_on_its_channel(
    world: World,
) -> None:
    """``fastflow cleanup`` killed while its Teams card was on the way (held by the
    endpoint) and after its e-mail had gone out: the e-mail is recorded as delivered at
    once, the card stays "in progress". Once it has been so for longer than a delivery
    can take, the next pass sends the card again, and only the card."""
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    world.teams.hang()  # every card held: the delivery cannot end

    def email_sent_card_held() -> bool:
        seen = [(d.channel, d.ok) for d in _deliveries(world.ctx)]
        return sorted(seen, key=str) == [("email", True), ("teams", None)]

    with cli_process("cleanup", env={}) as proc:
        world.teams.wait_for(1, 60)
        wait_until(email_sent_card_held, 60, "the e-mail delivered and the card held")
        proc.kill()
        proc.communicate(timeout=30)
    world.teams.clear()
    assert len(world.mails()) == 1

    _, soon = world.cycle()  # the card may still be on its way: not sent twice
    assert soon.kind is None and world.cards() == []
    _, later = world.cycle(at=datetime.now(UTC) + records.ABANDONED_AFTER + timedelta(seconds=5))
    assert later.kind == notify.Kind.REMINDER
    assert [(r.channel, r.ok) for r in later.results] == [("teams", True)]
    assert len(world.cards()) == 1 and len(world.mails()) == 1


def test_a_delivery_that_cannot_be_recorded_is_logged_and_breaks_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses the record of a delivery while the card is on its way (its
    table is gone for a moment: renamed by another connection). The card still goes
    out, the failure to record it is logged without a secret, the e-mail's record
    stands, and once the table is back the card is the one message still owed: sent
    again when its delivery has been "in progress" longer than one can take."""
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    world.teams.hang(times=1)
    summary = run_pass(world.ctx, "test", now=NOW)
    assert summary.backup_failures == 2

    def email_recorded_card_held() -> bool:
        seen = [(d.channel, d.ok) for d in _deliveries(world.ctx)]
        return sorted(seen, key=str) == [("email", True), ("teams", None)]

    with caplog.at_level(logging.INFO, logger="fastflow"):
        delivery = notify.after_pass(world.ctx, summary, options=FAST)
        world.teams.wait_for(1, WAIT)
        wait_until(email_recorded_card_held, WAIT, "the e-mail recorded and the card held")
        with world.ctx.db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE notification_deliveries RENAME TO deliveries_away"))
        try:
            world.teams.release()
            assert delivery.wait(WAIT), "delivery did not finish"
        finally:
            with world.ctx.db.engine.begin() as conn:
                conn.execute(text("ALTER TABLE deliveries_away RENAME TO notification_deliveries"))

    assert {(r.channel, r.ok) for r in delivery.results} == {("email", True), ("teams", True)}
    assert len(world.cards()) == 1 and len(world.mails()) == 1
    logged = caplog.text
    assert "cannot record the teams delivery: OperationalError" in logged
    assert TOKEN not in logged and SMTP_PASSWORD not in logged
    seen = sorted(((d.channel, d.ok) for d in _deliveries(world.ctx)), key=str)
    assert seen == [("email", True), ("teams", None)]

    _, soon = world.cycle()  # the card may still be on its way: not sent twice
    assert soon.kind is None and len(world.cards()) == 1
    _, later = world.cycle(at=datetime.now(UTC) + records.ABANDONED_AFTER + timedelta(seconds=5))
    assert [(r.channel, r.ok) for r in later.results] == [("teams", True)]
    assert len(world.cards()) == 2 and len(world.mails()) == 1


def test_recovery_sends_one_message_per_channel(world: World) -> None:
    seed_series(world.ctx, "etl", 4)
    world.s3.proxy.fail(500)
    world.cycle()
    world.s3.proxy.clear()
    summary, delivery = world.cycle()
    assert summary.archived_runs == 3 and summary.backup_failures == 0
    assert delivery.kind == notify.Kind.RECOVERY
    assert (len(world.mails()), len(world.cards())) == (2, 2)
    mail = world.mails()[-1]
    assert mail.message["Subject"] == "[fastflow] S3 log backup works again: 3 runs archived"
    plain, _ = _mail_text(mail)
    assert "Backups succeed again; 3 runs archived" in plain
    assert "of the 3 runs that failed meanwhile, 3 are archived now" in plain
    assert "Backups succeed again; 3 runs archived" in _card_text(world.cards()[-1])

    seed_series(world.ctx, "etl", 2)
    _, quiet = world.cycle()
    assert quiet.kind is None and (len(world.mails()), len(world.cards())) == (2, 2)
    with world.ctx.db.session() as s:
        (incident,) = s.query(NotificationIncident).all()
        assert incident.closed_at is not None


def test_a_recovery_that_did_not_get_through_is_sent_again_on_its_channel(
    world: World,
) -> None:
    seed_series(world.ctx, "etl", 4)
    world.s3.proxy.fail(500)
    world.cycle()
    world.s3.proxy.clear()
    world.teams.respond(500, times=3)  # every attempt of the recovery card
    _, recovered = world.cycle()
    assert recovered.kind == notify.Kind.RECOVERY
    assert {r.channel: r.ok for r in recovered.results} == {"email": True, "teams": False}

    _, again = world.cycle()  # all well still: the card goes out now, e-mail had it
    assert again.kind == notify.Kind.RECOVERY
    assert [(r.channel, r.ok) for r in again.results] == [("teams", True)]
    assert "Backups succeed again" in _card_text(world.cards()[-1])
    assert len(world.mails()) == 2  # the failure and the one recovery

    _, quiet = world.cycle()
    assert quiet.kind is None
    # a day later a failed recovery is stale news: not sent again
    seed_series(world.ctx, "etl", 4)
    world.s3.proxy.fail(500)
    world.cycle()
    world.s3.proxy.clear()
    world.teams.respond(500, times=3)
    _, failed = world.cycle()  # its recovery card fails
    assert {r.channel: r.ok for r in failed.results} == {"email": True, "teams": False}
    posts = len(world.cards())
    _, late = world.cycle(at=datetime.now(UTC) + timedelta(hours=25))
    assert late.kind is None and len(world.cards()) == posts


def test_incomplete_s3_configuration_is_announced(world: World) -> None:
    data = world.ctx.settings.model_dump()
    data.update(s3_bucket=None)
    ctx = Context(settings=load_settings(**data), db=world.ctx.db)
    seed_series(ctx, "etl", 2)
    summary = run_pass(ctx, "test", now=NOW)
    delivery = notify.after_pass(ctx, summary, options=FAST)
    assert delivery.wait(WAIT) and delivery.kind == notify.Kind.FAILURE
    (mail,) = world.mails()
    assert mail.message["Subject"] == (
        "[fastflow] S3 log backup failed: S3 backup is enabled but not configured: missing "
        "S3_BUCKET"
    )


def test_dry_runs_and_repeated_calls_announce_nothing(world: World) -> None:
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    dry = run_pass(world.ctx, "test", now=NOW, dry_run=True)
    assert notify.after_pass(world.ctx, dry, options=FAST).kind is None
    summary, first = world.cycle()
    again = notify.after_pass(world.ctx, summary, options=FAST)
    assert first.kind == notify.Kind.FAILURE and again.kind is None
    assert len(world.mails()) == 1


# --- notifications never block or break the pass -----------------------------------------


@pytest.mark.parametrize("fault", ["teams-500+smtp-down", "teams-429", "teams-hang"])
def test_failing_channels_never_delay_the_pass_and_are_recorded(world: World, fault: str) -> None:
    runs = seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    smtp_down = "smtp-down" in fault
    if smtp_down:
        world.smtp.stop()
    if fault.startswith("teams-500"):
        world.teams.respond(500)
    elif fault == "teams-429":
        world.teams.respond(429, headers={"Retry-After": "1"})
    else:
        world.teams.hang()
    options = notify.DeliveryOptions(**{**FAST.__dict__, "timeout_s": 0.5, "attempts": 2})

    summary = run_pass(world.ctx, "test", now=NOW)
    assert summary.backup_failures == 2
    started = time.monotonic()
    delivery = notify.after_pass(world.ctx, summary, options=options)
    returned_after = time.monotonic() - started
    assert returned_after < 1.0
    if fault == "teams-hang":
        assert not delivery.done  # the hanging webhook is being waited for elsewhere
    assert delivery.wait(WAIT)

    results = {r.channel: r for r in delivery.results}
    assert not results["teams"].ok and results["teams"].attempts == 2
    expected = {
        "teams-500+smtp-down": "HTTP 500",
        "teams-429": "HTTP 429",
        "teams-hang": "timed out",
    }[fault]
    assert results["teams"].error is not None and expected in results["teams"].error
    assert results["email"].ok is (not smtp_down)
    if smtp_down:
        assert "connection refused" in (results["email"].error or "")
    else:
        assert len(world.mails()) == 1
    recorded = {d.channel: d for d in _deliveries(world.ctx)}
    assert recorded["teams"].ok is False and recorded["teams"].error == results["teams"].error
    assert recorded["teams"].attempts == 2 and recorded["teams"].kind == "failure"
    last = notify.last_results(world.ctx)
    assert last["teams"]["ok"] is False and last["email"]["ok"] is (not smtp_down)
    # the local data stays, and the next pass still works
    assert all(r.log.exists() for r in runs)
    world.s3.proxy.clear()
    world.teams.clear()
    assert run_pass(world.ctx, "test", now=NOW).archived_runs == 2


def test_never_raises_when_the_database_is_broken(
    world: World, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(500)
    summary = run_pass(world.ctx, "test", now=NOW)
    data = world.ctx.settings.model_dump()
    data.update(database_url=f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    settings = load_settings(**data)
    broken = Context(settings=settings, db=Database(settings))
    try:
        delivery = notify.after_pass(broken, summary, options=FAST)
        assert delivery.done and delivery.kind is None
        results = notify.send_test(broken, email=True, teams=True, options=FAST)
        assert [(r.channel, r.ok) for r in results] == [("email", False), ("teams", False)]
        assert set(notify.last_results(broken)) == {"email", "teams"}
    finally:
        broken.db.dispose()
    assert "cannot notify about cleanup pass" in caplog.text


# --- no secret anywhere ---------------------------------------------------------------------


def test_no_secret_in_messages_logs_records_or_results(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastflow")
    caplog.set_level(logging.DEBUG, logger="httpx")
    seed_series(world.ctx, "etl", 3)
    world.s3.proxy.fail(403, code="InvalidAccessKeyId")
    world.teams.respond(500, times=3)
    _, failed = world.cycle()
    assert {r.channel: r.ok for r in failed.results} == {"email": True, "teams": False}
    # a wrong SMTP password and a webhook that answers with its own URL
    wrong = "Wr0ng-password-q9"
    data = world.ctx.settings.model_dump()
    data.update(smtp_password=wrong)
    ctx = Context(settings=load_settings(**data), db=world.ctx.db)
    world.teams.respond(404, times=1, body=f"no such hook {world.teams.url}")
    tested = notify.send_test(ctx, email=True, teams=True, options=FAST)
    assert [r.ok for r in tested] == [False, False]
    world.s3.proxy.clear()
    _, recovered = world.cycle()
    assert recovered.kind == notify.Kind.RECOVERY

    seen: list[str] = [caplog.text]
    for mail in world.mails():
        seen.append(mail.raw.decode("utf-8", "replace"))
        seen.extend(_mail_text(mail))
    seen.extend(p.body.decode("utf-8", "replace") for p in world.cards())
    seen.append(json.dumps(notify.last_results(world.ctx)))
    seen.extend(json.dumps(r.to_dict()) for r in [*failed.results, *tested, *recovered.results])
    with world.ctx.db.engine.connect() as conn:
        for table in (
            "notification_deliveries",
            "notification_incidents",
            "backup_failures",
            "cleanup_passes",
        ):
            seen.extend(repr(row) for row in conn.execute(text(f"SELECT * FROM {table}")))
    everything = "\n".join(seen)
    assert "HTTP Request: POST" in everything and "HTTP 404" in everything  # we did look
    for secret in (SMTP_PASSWORD, wrong, world.s3.secret_key, TOKEN, world.teams.url):
        assert secret not in everything, secret
