"""E-mail notifications against a real SMTP server (aiosmtpd): modes, auth, faults, text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest

from fastflow import notify
from fastflow.config import load_settings
from fastflow.context import Context
from fastflow.notify import email, messages
from fastflow.notify.incidents import Kind
from fastflow.notify.messages import FailedRun, Notice
from tests.harness.smtp import CapturedMail, SmtpCapture

FAST = notify.DeliveryOptions(timeout_s=2, attempts=3, backoff_s=(0.05,), budget_s=5)
RECIPIENTS = ["ops@example.com", "Jörg.Backup@example.org", "oncall@localhost"]
PASSWORD = "smtp-Pa55word-7f3k"
AT = datetime(2026, 6, 1, 2, 0, 7, tzinfo=UTC)

SmtpFactory = Callable[..., SmtpCapture]


def mail_ctx(app: Context, server: SmtpCapture | None, **overrides: Any) -> Context:
    """``app``'s database with e-mail settings pointing at ``server`` (plain, no auth)."""
    data = app.settings.model_dump()
    data.update(
        email_enabled=True,
        smtp_host="127.0.0.1",
        smtp_port=server.port if server else 2525,
        smtp_security="none",
        smtp_from="fastflow@example.com",
        email_recipients=RECIPIENTS,
        fastflow_base_url="https://fastflow.example.com",
    )
    data.update(overrides)
    return Context(settings=load_settings(**data), db=app.db)


def _one(server: SmtpCapture) -> CapturedMail:
    mails = server.messages
    assert len(mails) == 1, [m.message["Subject"] for m in mails]
    return mails[0]


def _parts(msg: EmailMessage) -> tuple[str, str]:
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


def _test_result(ctx: Context, **options: Any) -> notify.ChannelResult:
    opts = notify.DeliveryOptions(**{**FAST.__dict__, **options})
    (result,) = notify.send_test(ctx, email=True, teams=False, options=opts)
    assert result.channel == "email"
    return result


# --- transport modes and authentication -------------------------------------------------


def test_plain_without_auth_sends_one_message_to_every_recipient(
    app: Context, smtp_server: SmtpCapture
) -> None:
    ctx = mail_ctx(app, smtp_server)
    result = _test_result(ctx)
    assert result.ok and result.error is None and result.attempts == 1
    mail = _one(smtp_server)
    assert sorted(mail.rcpt_tos) == sorted(RECIPIENTS)
    assert mail.mail_from == "fastflow@example.com"
    assert mail.auth_login is None and not mail.tls
    msg = mail.message
    assert msg["Subject"] == "[fastflow] Test notification"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert all(r in msg["To"] for r in RECIPIENTS)
    text, html = _parts(msg)
    assert "notifications on this channel work" in text
    assert "https://fastflow.example.com/settings" in text and "<html>" in html
    assert notify.last_results(ctx)["email"]["ok"] is True


def test_starttls_with_authentication(app: Context, smtp_factory: SmtpFactory) -> None:
    server = smtp_factory(
        username="fastflow", password=PASSWORD, auth_required=True, require_starttls=True
    )
    ctx = mail_ctx(
        app, server, smtp_security="starttls", smtp_user="fastflow", smtp_password=PASSWORD
    )
    result = _test_result(ctx, ssl_context=server.client_context())
    assert result.ok, result.error
    mail = _one(server)
    assert mail.tls and mail.auth_login == "fastflow"


def test_implicit_tls_with_authentication(app: Context, smtp_factory: SmtpFactory) -> None:
    server = smtp_factory(
        username="fastflow", password=PASSWORD, auth_required=True, implicit_tls=True
    )
    ctx = mail_ctx(app, server, smtp_security="ssl", smtp_user="fastflow", smtp_password=PASSWORD)
    result = _test_result(ctx, ssl_context=server.client_context())
    assert result.ok, result.error
    mail = _one(server)
    assert mail.tls and mail.auth_login == "fastflow"


def test_untrusted_certificate_fails_at_once(app: Context, smtp_factory: SmtpFactory) -> None:
    server = smtp_factory(implicit_tls=True)
    ctx = mail_ctx(app, server, smtp_security="ssl")
    result = _test_result(ctx)  # the default context does not trust the test certificate
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "certificate" in result.error
    assert server.messages == []


def test_starttls_wanted_but_not_offered_never_sends_in_clear(
    app: Context, smtp_server: SmtpCapture
) -> None:
    ctx = mail_ctx(app, smtp_server, smtp_security="starttls")
    result = _test_result(ctx)
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "does not offer STARTTLS" in result.error
    assert smtp_server.messages == []


def test_server_requiring_auth_without_credentials_is_reported(
    app: Context, smtp_factory: SmtpFactory
) -> None:
    server = smtp_factory(auth_required=True)
    result = _test_result(mail_ctx(app, server))
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "530" in result.error
    assert server.messages == []


def test_wrong_password_fails_once_without_showing_it(
    app: Context, smtp_factory: SmtpFactory
) -> None:
    server = smtp_factory(username="fastflow", password=PASSWORD, auth_required=True)
    wrong = "Wr0ng-password-q9"
    ctx = mail_ctx(
        app, server, smtp_user="fastflow", smtp_password=wrong, smtp_allow_plaintext_auth=True
    )
    result = _test_result(ctx)
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "authentication as 'fastflow' failed" in result.error
    assert wrong not in result.error and wrong not in str(notify.last_results(ctx))


def test_login_only_when_user_and_password_are_set(app: Context, smtp_factory: SmtpFactory) -> None:
    server = smtp_factory(username="fastflow", password=PASSWORD)  # AUTH offered, optional
    result = _test_result(mail_ctx(app, server, smtp_user="fastflow"))  # no password
    assert result.ok
    assert _one(server).auth_login is None


@pytest.mark.parametrize(
    ("port", "override", "expected"),
    [
        (465, None, "ssl"),
        (587, None, "starttls"),
        (25, None, "none"),
        (2525, None, "none"),
        (465, "none", "none"),
        (25, "starttls", "starttls"),
        (587, "ssl", "ssl"),
    ],
)
def test_security_follows_the_port_unless_overridden(
    port: int, override: str | None, expected: str
) -> None:
    settings = load_settings(smtp_port=port, smtp_security=override)
    assert email.security(settings) == expected


# --- faults ---------------------------------------------------------------------------


def test_smtp_down_is_tried_three_times_and_recorded(
    app: Context, smtp_server: SmtpCapture
) -> None:
    smtp_server.stop()
    ctx = mail_ctx(app, smtp_server)
    result = _test_result(ctx)
    assert not result.ok and result.attempts == 3
    assert result.error is not None
    assert "connection refused" in result.error and "3 attempts" in result.error
    last = notify.last_results(ctx)["email"]
    assert last["ok"] is False and last["error"] == result.error and last["kind"] == "test"


def test_temporary_rejection_is_retried(app: Context, smtp_server: SmtpCapture) -> None:
    smtp_server.reject("451 4.3.0 Try again later", times=1)
    result = _test_result(mail_ctx(app, smtp_server))
    assert result.ok and result.attempts == 2
    assert len(smtp_server.messages) == 1


def test_permanent_rejection_is_not_retried(app: Context, smtp_server: SmtpCapture) -> None:
    smtp_server.reject("554 5.6.0 Rejected by relay-10.1.2.3.internal policy X", times=None)
    result = _test_result(mail_ctx(app, smtp_server))
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "554 5.6.0" in result.error
    # the server's own words are not kept: delivery errors are shown to viewers (issue 13)
    assert "relay-10.1.2.3" not in result.error and "policy" not in result.error


def test_refused_recipients_are_named_with_codes_only() -> None:
    from fastflow.notify import email

    refused = {
        "b@example.com": (550, b"5.1.1 <b@example.com>: mailbox at mx-internal-7 unknown"),
        "a@example.com": (553, b"sorry, relaying denied from 10.0.0.9"),
    }
    assert email._refused(refused) == "a@example.com (553), b@example.com (550 5.1.1)"


def test_time_budget_bounds_the_retries(app: Context, smtp_server: SmtpCapture) -> None:
    smtp_server.stop()
    result = _test_result(mail_ctx(app, smtp_server), backoff_s=(0.4,), budget_s=0.6)
    assert not result.ok and result.attempts == 2
    assert result.error is not None and "budget" in result.error


def test_enabled_but_incomplete_is_reported_not_ignored(app: Context) -> None:
    ctx = mail_ctx(app, None, smtp_host=None, email_recipients=[])
    result = _test_result(ctx)
    assert not result.ok
    assert result.error == (
        "e-mail is enabled but not configured: missing SMTP_HOST, EMAIL_RECIPIENTS"
    )


def test_disabled_channel_is_reported_by_the_test(app: Context, smtp_server: SmtpCapture) -> None:
    ctx = mail_ctx(app, smtp_server, email_enabled=False)
    result = _test_result(ctx)
    assert not result.ok and result.error is not None and "EMAIL_ENABLED" in result.error
    assert smtp_server.messages == []


# --- the digest -------------------------------------------------------------------------


def _failed(i: int, pipeline: str = "etl") -> FailedRun:
    return FailedRun(
        run_id=f"00000000-0000-0000-0000-{i:012d}",
        pipeline_name=pipeline,
        started_at=f"2026-05-{1 + i % 28:02d}T02:00:00+00:00",
        error=f"S3 server error 500 for run {i}",
    )


def _notice(kind: Kind, runs: list[FailedRun], **kw: Any) -> Notice:
    return Notice(
        kind=kind,
        at=AT,
        base_url="https://ff.example.com",
        runs=tuple(runs),
        total_runs=kw.pop("total_runs", len(runs)),
        **kw,
    )


def test_digest_lists_fifty_runs_then_and_n_more() -> None:
    runs = [_failed(i) for i in range(60)]
    notice = _notice(Kind.FAILURE, runs, total_runs=75)
    text, html = messages.email_text(notice), messages.email_html(notice)
    assert messages.subject(notice) == "[fastflow] S3 log backup failed: 75 runs"
    listed = [r for r in runs if r.run_id in text]
    assert len(listed) == 50
    assert "and 25 more" in text and "and 25 more" in html
    for run in listed:
        assert f"https://ff.example.com/runs/{run.run_id}" in text
        assert f'href="https://ff.example.com/runs/{run.run_id}"' in html
        assert run.error in text
    assert "https://ff.example.com/settings" in text and "https://ff.example.com/settings" in html
    assert "started 2026-05-02 02:00 UTC" in text


def test_subjects_of_each_kind() -> None:
    one = [_failed(1)]
    since = datetime(2026, 5, 30, 2, 0, tzinfo=UTC)
    assert messages.subject(_notice(Kind.FAILURE, one)) == "[fastflow] S3 log backup failed: 1 run"
    assert messages.subject(_notice(Kind.GROWN, one * 3, new_runs=2)) == (
        "[fastflow] S3 log backup failed: 3 runs (2 new)"
    )
    assert messages.subject(_notice(Kind.REMINDER, one, since=since)) == (
        "[fastflow] S3 log backup still failing since 2026-05-30 02:00 UTC: 1 run"
    )
    recovery = _notice(
        Kind.RECOVERY, [], since=since, archived_runs=4, incident_runs=3, recovered_runs=3
    )
    assert messages.subject(recovery) == "[fastflow] S3 log backup works again: 4 runs archived"
    text = messages.email_text(recovery)
    assert "Backups succeed again; 4 runs archived" in text
    assert "of the 3 runs that failed meanwhile, 3 are archived now" in text
    reminder = messages.email_text(_notice(Kind.REMINDER, one, since=since))
    assert "Still failing since 2026-05-30 02:00 UTC." in reminder


def test_utf8_subject_and_body_survive_smtp(app: Context, smtp_server: SmtpCapture) -> None:
    ctx = mail_ctx(app, smtp_server)
    notice = _notice(
        Kind.FAILURE,
        [_failed(1, pipeline="Lohnabrechnung-Übersicht")],
        total_runs=0,
        pass_errors=("S3-Sicherung unvollständig – fehlt: S3_BUCKET",),
    )
    outcome = email.deliver(
        ctx.settings,
        messages.subject(notice),
        messages.email_text(notice),
        messages.email_html(notice),
        notice.at,
        FAST,
    )
    assert outcome.ok, outcome.error
    msg = _one(smtp_server).message
    assert msg["Subject"] == (
        "[fastflow] S3 log backup failed: S3-Sicherung unvollständig – fehlt: S3_BUCKET"
    )
    text, html = _parts(msg)
    assert "Lohnabrechnung-Übersicht" in text and "Lohnabrechnung-Übersicht" in html


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_a_host_name_is_resolved_and_tls_checks_that_name(
    app: Context, smtp_factory: SmtpFactory, mode: str
) -> None:
    """The host is resolved by fastflow (within the delivery's deadline) and each address
    tried in turn — ``localhost`` may give ``::1`` first, where the test server does not
    listen — while TLS still checks the certificate against the name."""
    server = smtp_factory(implicit_tls=mode == "ssl", require_starttls=mode == "starttls")
    ctx = mail_ctx(app, server, smtp_host="localhost", smtp_security=mode)
    result = _test_result(ctx, ssl_context=server.client_context())
    assert result.ok and result.attempts == 1, result.error
    assert _one(server).tls


def test_an_unreachable_address_is_skipped_but_a_tls_failure_is_not_hidden(
    app: Context, smtp_factory: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: each address of the host is tried in turn — but only when it cannot be
    reached; a certificate failure on the first one is reported as it is, not as the
    "connection refused" of the next (nothing listens on 127.0.0.2 here)."""
    from fastflow.notify import email

    server = smtp_factory(implicit_tls=True)
    ctx = mail_ctx(app, server, smtp_host="localhost", smtp_security="ssl")
    monkeypatch.setattr(email, "addresses", lambda *_: ["127.0.0.2", "127.0.0.1"])
    result = _test_result(ctx, ssl_context=server.client_context())
    assert result.ok and result.attempts == 1, result.error  # 127.0.0.2 refused, then .1
    # the certificate is checked against the name, not the address connected to
    other = mail_ctx(app, server, smtp_host="mail.example.test", smtp_security="ssl")
    mismatch = _test_result(other, ssl_context=server.client_context())
    assert not mismatch.ok and "Hostname mismatch" in (mismatch.error or "")

    monkeypatch.setattr(email, "addresses", lambda *_: ["127.0.0.1", "127.0.0.2"])
    untrusted = _test_result(ctx)  # the default context does not trust the certificate
    assert not untrusted.ok and untrusted.attempts == 1
    assert untrusted.error is not None and "certificate" in untrusted.error
    assert len(server.messages) == 1


def test_a_hung_lookup_of_this_hosts_own_name_holds_no_delivery(
    app: Context, smtp_server: SmtpCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: smtplib looks up this host's name for EHLO (reverse DNS) without any
    bound. fastflow looks it up once in the background; until it is known, EHLO says the
    connection's address."""
    import socket
    import threading
    import time

    from fastflow.notify import email

    released = threading.Event()
    monkeypatch.setattr(socket, "getfqdn", lambda *_: released.wait(30) and "late.example")
    monkeypatch.setattr(email, "_fqdn", [])
    monkeypatch.setattr(email, "_fqdn_looked_up", threading.Event())
    try:
        t0 = time.monotonic()
        result = _test_result(mail_ctx(app, smtp_server))
        took = time.monotonic() - t0
    finally:
        released.set()
    assert result.ok, result.error
    assert took < 5, took
    assert _one(smtp_server).ehlo_name == "[127.0.0.1]"
