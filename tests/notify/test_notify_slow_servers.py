"""Servers that answer too slowly: a delivery ends with its time budget however the
server drips its answer, an endless answer body is not read, and an e-mail whose
confirmation comes late is neither given up early nor sent twice. Found by an outside
audit: every read got its own timeout, so a server sending a byte every few seconds held
a delivery (and the notification worker behind it) for ever; a late ``250`` after the
message was taken for a failure and the mail sent again; Teams' answer was read whole."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from fastflow import notify
from fastflow.config import load_settings
from fastflow.context import Context
from tests.harness.drip import RawServer, drip, read_until
from tests.notify.test_notify_email import mail_ctx

BUDGET = 2.0
SLACK = 1.5  # the deadline's thread, a socket's shutdown, the record written


def _options(**changes: Any) -> notify.DeliveryOptions:
    base: dict[str, Any] = {"timeout_s": 0.5, "attempts": 3, "backoff_s": (0.05,)}
    return notify.DeliveryOptions(**{**base, "budget_s": BUDGET, **changes})


def _mail(
    app: Context, port: int, security: str = "none", **options: Any
) -> tuple[notify.ChannelResult, float]:
    ctx = mail_ctx(app, None, smtp_port=port, smtp_security=security)
    t0 = time.monotonic()
    (result,) = notify.send_test(ctx, email=True, teams=False, options=_options(**options))
    return result, time.monotonic() - t0


def _teams(app: Context, port: int) -> tuple[notify.ChannelResult, float]:
    data = app.settings.model_dump()
    data.update(teams_enabled=True, teams_webhook_url=f"http://127.0.0.1:{port}/webhook/k")
    ctx = Context(settings=load_settings(**data), db=app.db)
    t0 = time.monotonic()
    (result,) = notify.send_test(ctx, email=False, teams=True, options=_options())
    return result, time.monotonic() - t0


class SmtpDialogue:
    """A minimal SMTP server that takes every message and confirms it ``late`` seconds
    after the final dot (``None``: never)."""

    def __init__(
        self, late: float | None, refuse_rcpt: int = 0, quit_reply: bytes = b"221 bye\r\n"
    ) -> None:
        self.late = late
        self.quit_reply = quit_reply
        self.messages = 0
        self.refuse_rcpt = refuse_rcpt  # the first this many RCPTs get a 450
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket, stopped: threading.Event) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"220 slow.example ESMTP\r\n")
        for raw in f:
            verb = raw[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                conn.sendall(b"250-slow.example\r\n250 SMTPUTF8\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                for line in f:
                    if line == b".\r\n":
                        break
                with self._lock:
                    self.messages += 1
                if self.late is None or stopped.wait(self.late):
                    stopped.wait()
                    return
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"RCPT" and self.refuse_rcpt > 0:
                self.refuse_rcpt -= 1
                conn.sendall(b"450 4.2.0 greylisted, come back later\r\n")
            elif verb == b"QUIT":
                conn.sendall(self.quit_reply)
                return
            else:
                conn.sendall(b"250 OK\r\n")


def test_an_smtp_greeting_dripped_byte_by_byte_ends_with_the_budget(app: Context) -> None:
    def greet(conn: socket.socket, stopped: threading.Event) -> None:
        drip(conn, b"220-", b"still here\r\n220-", 0.1, stopped)

    with RawServer(greet) as server:
        result, took = _mail(app, server.port)
    assert not result.ok
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert took < BUDGET + SLACK, took


def test_a_late_confirmation_is_awaited_and_the_mail_sent_once(app: Context) -> None:
    dialogue = SmtpDialogue(late=1.2)  # longer than a read timeout (0.5 s), within budget
    with RawServer(dialogue) as server:
        result, _ = _mail(app, server.port, budget_s=4.0)
    assert result.ok and result.attempts == 1, result
    assert dialogue.messages == 1


def test_a_mail_never_confirmed_is_reported_and_not_sent_again(app: Context) -> None:
    dialogue = SmtpDialogue(late=None)
    with RawServer(dialogue) as server:
        result, took = _mail(app, server.port)
    assert not result.ok and result.attempts == 1
    assert result.error is not None
    assert "sent but the server did not confirm it" in result.error
    assert "no answer within the delivery time budget" in result.error
    assert dialogue.messages == 1
    assert took < BUDGET + SLACK, took


def test_teams_headers_dripped_byte_by_byte_end_with_the_budget(app: Context) -> None:
    def answer(conn: socket.socket, stopped: threading.Event) -> None:
        read_until(conn, b"\r\n\r\n")
        drip(conn, b"HTTP/1.1 200 OK\r\n", b"X-Slow: yes\r\n", 0.1, stopped)

    with RawServer(answer) as server:
        result, took = _teams(app, server.port)
    assert not result.ok
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert took < BUDGET + SLACK, took


def test_an_endless_teams_error_body_is_not_read(app: Context) -> None:
    sent: list[int] = []

    def endless(conn: socket.socket, stopped: threading.Event) -> None:
        read_until(conn, b"\r\n\r\n")
        conn.sendall(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        total = 0
        try:
            while not stopped.is_set():
                conn.sendall(chunk)
                total += 65536
        finally:
            sent.append(total)

    with RawServer(endless) as server:
        result, took = _teams(app, server.port)
    assert not result.ok and result.attempts == 3
    assert result.error is not None and "HTTP 500" in result.error
    assert took < BUDGET + SLACK, took


def test_every_recipient_refused_for_now_is_tried_again(app: Context) -> None:
    """An outside audit: a 4xx to every RCPT (greylisting) was taken as final."""
    dialogue = SmtpDialogue(late=0, refuse_rcpt=3)  # mail_ctx has three recipients
    with RawServer(dialogue) as server:
        result, _ = _mail(app, server.port, budget_s=5.0)
    assert result.ok and result.attempts == 2, result
    assert dialogue.messages == 1


def test_every_recipient_refused_for_now_until_the_end_is_reported_by_code(
    app: Context,
) -> None:
    dialogue = SmtpDialogue(late=0, refuse_rcpt=1000)
    with RawServer(dialogue) as server:
        result, _ = _mail(app, server.port, budget_s=5.0)
    assert not result.ok and result.attempts == 3
    assert result.error is not None and "(450 4.2.0)" in result.error
    assert "greylisted" not in result.error  # the server's own words are not kept


def test_a_teams_retry_on_a_kept_alive_connection_still_ends_with_the_budget(
    app: Context,
) -> None:
    """The first answer (a 500 with a short body, the connection kept alive) is read
    whole; the retry must not go out on that connection, which no deadline watched."""
    first = threading.Event()

    def answer(conn: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            if not read_until(conn, b"\r\n\r\n"):
                return
            if not first.is_set():
                first.set()
                conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
                continue
            drip(conn, b"HTTP/1.1 200 OK\r\n", b"X-Slow: yes\r\n", 0.1, stopped)

    with RawServer(answer) as server:
        result, took = _teams(app, server.port)
    assert first.is_set() and not result.ok
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert took < BUDGET + SLACK, took


def test_a_short_lived_commands_waits_share_one_budget(monkeypatch: Any) -> None:
    """An outside audit: ``fastflow run`` waited CLI_WAIT_S for the run's message and
    then CLI_WAIT_S again at exit (and a command retiring interrupted runs once per
    run). Every wait of one process now comes out of one CLI_WAIT_S."""
    from fastflow.notify import delivery

    monkeypatch.setattr(delivery, "CLI_WAIT_S", 0.6)
    monkeypatch.setattr(delivery, "_cli_waited", 0.0)
    never = [delivery.Delivery() for _ in range(3)]  # deliveries that never end
    t0 = time.monotonic()
    assert [delivery.cli_wait(d) for d in never] == [False, False, False]
    took = time.monotonic() - t0
    assert 0.6 <= took < 1.0, took  # not 3 x 0.6
    assert delivery.cli_wait_left() == 0.0
    assert delivery.cli_wait(delivery.Delivery.nothing()) is True  # done ones still count


def test_a_drip_after_starttls_still_ends_with_the_budget(app: Context) -> None:
    """The deadline watches the TCP connection, so a socket wrapped in TLS by STARTTLS
    is shut down all the same."""
    import ssl

    from tests.harness.smtp import self_signed_cert

    cert, key = self_signed_cert()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    def starttls_then_drip(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(b"220 slow.example ESMTP\r\n")
        read_until(conn, b"\r\n")  # EHLO
        conn.sendall(b"250-slow.example\r\n250 STARTTLS\r\n")
        read_until(conn, b"\r\n")  # STARTTLS
        conn.sendall(b"220 go ahead\r\n")
        tls = server_tls.wrap_socket(conn, server_side=True)
        read_until(tls, b"\r\n")  # EHLO again, over TLS
        drip(tls, b"250-", b"still here\r\n250-", 0.1, stopped)

    client_tls = ssl.create_default_context(cafile=str(cert))
    with RawServer(starttls_then_drip) as server:
        result, took = _mail(app, server.port, "starttls", ssl_context=client_tls, attempts=1)
    assert not result.ok
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert took < BUDGET + SLACK, took


def test_a_bad_answer_to_quit_after_the_message_was_taken_is_no_failure(app: Context) -> None:
    """Found by a review: a 250 to the message and then anything but 221 to QUIT was
    raised, counted as a failure and the mail sent again on every attempt."""
    dialogue = SmtpDialogue(late=0, quit_reply=b"500 5.5.1 what?\r\n")
    with RawServer(dialogue) as server:
        result, _ = _mail(app, server.port)
    assert result.ok and result.attempts == 1, result
    assert dialogue.messages == 1


def test_a_connection_that_cannot_be_watched_is_closed_not_left_unbounded(
    app: Context, monkeypatch: Any, caplog: Any
) -> None:
    """A review: with no descriptor left to duplicate the socket (EMFILE), the deadline's
    ``watch`` raised out of Teams' own error handling. The attempt now fails as a broken
    connection, at once, and is retried like one; nothing runs without a deadline."""
    import errno
    import logging

    def no_descriptor_left(*_: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    def answer(conn: socket.socket, stopped: threading.Event) -> None:
        read_until(conn, b"\r\n\r\n")
        drip(conn, b"HTTP/1.1 200 OK\r\n", b"X-Slow: yes\r\n", 0.1, stopped)

    caplog.set_level(logging.INFO, logger="fastflow.notify")
    monkeypatch.setattr(socket, "fromfd", no_descriptor_left)
    with RawServer(answer) as server:
        result, took = _teams(app, server.port)
    assert not result.ok and result.attempts == 3, result
    assert result.error is not None and "Teams webhook" in result.error
    assert "cannot be watched, closed: [Errno 24]" in caplog.text
    assert took < BUDGET + SLACK, took


def test_a_name_lookup_that_never_answers_ends_with_the_budget(
    app: Context, monkeypatch: Any
) -> None:
    """A review: the SMTP host's name lookup was not bounded by the delivery's deadline
    (the resolver's own timeouts, per name server, can outlast it). The lookup that never
    answers is given up when the budget ends."""
    released = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "mail.hangs.example":
            released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    ctx = mail_ctx(app, None, smtp_host="mail.hangs.example")
    t0 = time.monotonic()
    try:
        (result,) = notify.send_test(ctx, email=True, teams=False, options=_options())
    finally:
        released.set()
    took = time.monotonic() - t0
    assert not result.ok
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert took < BUDGET + SLACK, took


def _no_proxy(monkeypatch: Any) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _teams_at(app: Context, url: str) -> tuple[notify.ChannelResult, float]:
    data = app.settings.model_dump()
    data.update(teams_enabled=True, teams_webhook_url=url)
    ctx = Context(settings=load_settings(**data), db=app.db)
    t0 = time.monotonic()
    (result,) = notify.send_test(ctx, email=False, teams=True, options=_options())
    return result, time.monotonic() - t0


def test_a_teams_name_lookup_that_never_answers_ends_with_the_budget(
    app: Context, monkeypatch: Any
) -> None:
    """As for e-mail: httpx resolves the webhook's host without a bound of its own; a
    lookup that never answers is given up when the budget ends (no proxy set)."""
    released = threading.Event()
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "teams.hangs.example":
            looked_up.append(host)
            released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    _no_proxy(monkeypatch)
    monkeypatch.setenv("NO_PROXY", "localhost")  # (alone, it sets no proxy)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # (not for an https URL)
    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        result, took = _teams_at(app, "https://teams.hangs.example/webhookb2/k?sig=s3cr3t")
    finally:
        released.set()
    assert looked_up == ["teams.hangs.example"]  # one attempt: the budget went on it
    assert not result.ok and result.attempts == 1, result
    assert result.error is not None and "no answer within the delivery time budget" in result.error
    assert "s3cr3t" not in result.error
    assert took < BUDGET + SLACK, took


def test_a_teams_host_that_does_not_resolve_is_retried_and_reported(
    app: Context, monkeypatch: Any
) -> None:
    """An unknown name is an error of each attempt (retried: a resolver may fail for a
    moment), reported in fixed words."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def unknown(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "teams.unknown.example":
            looked_up.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    _no_proxy(monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    result, took = _teams_at(app, "https://teams.unknown.example/webhookb2/k")
    assert not result.ok and result.attempts == 3, result
    assert len(looked_up) == 3
    assert result.error is not None and "cannot resolve the host name" in result.error
    assert took < BUDGET + SLACK, took
