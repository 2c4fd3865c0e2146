"""E-mail through SMTP: one message to all ``EMAIL_RECIPIENTS``, plain text plus HTML.

Best-effort: ``send`` never raises; it returns an ``Outcome`` whose error text names the
server and what went wrong, never the password. Transport security follows
``SMTP_SECURITY`` or, when unset, the port: 465 implicit TLS, 587 STARTTLS, anything else
plain. With STARTTLS the message is never sent in clear when the server does not offer
it. Login happens only when both ``SMTP_USER`` and ``SMTP_PASSWORD`` are set, and only over
TLS — unless ``SMTP_SECURITY=none`` *and* ``SMTP_ALLOW_PLAINTEXT_AUTH=true``; otherwise the
delivery fails before connecting, and no credential leaves the process. The connection
ends with the delivery's time budget, however slowly the server answers; once the
message itself was sent, its confirmation is awaited until then (servers may scan it
for minutes) and a message sent but unconfirmed is never sent again (a duplicate).
"""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib
import socket
import ssl
import threading
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Literal, cast

from fastflow.config import Settings
from fastflow.notify.retry import (
    BUDGET_SPENT,
    Budget,
    Deadline,
    DeliveryOptions,
    Outcome,
    addresses,
)
from fastflow.security import redact

log = logging.getLogger("fastflow.notify.email")

Security = Literal["ssl", "starttls", "none"]
# Python folds a long subject that starts with "[" before its first word, which readers
# then show with a leading space; RFC 5322 allows lines up to 998 characters.
_POLICY = policy.SMTP.clone(max_line_length=998)
IMPLICIT_TLS_PORT = 465
STARTTLS_PORT = 587


class _Permanent(Exception):
    """A failure that another attempt would not fix (wrong password, no STARTTLS, ...)."""


def security(settings: Settings) -> Security:
    """The transport security in effect for these settings."""
    if settings.smtp_security is not None:
        return settings.smtp_security
    if settings.smtp_port == IMPLICIT_TLS_PORT:
        return "ssl"
    if settings.smtp_port == STARTTLS_PORT:
        return "starttls"
    return "none"


def missing(settings: Settings) -> list[str]:
    """Variables that e-mail still needs (empty when configured)."""
    needed = {
        "SMTP_HOST": settings.smtp_host,
        "SMTP_FROM": settings.smtp_from,
        "EMAIL_RECIPIENTS": settings.email_recipients,
    }
    return [name for name, value in needed.items() if not value]


def plaintext_auth_refusal(settings: Settings) -> str | None:
    """Why the credentials may not be sent with these settings (None: they may)."""
    if not (settings.smtp_user and settings.smtp_password is not None):
        return None  # no login
    if security(settings) != "none":
        return None  # TLS protects them
    if settings.smtp_security == "none" and settings.smtp_allow_plaintext_auth:
        return None  # explicitly allowed
    return (
        "refusing to send the SMTP password without TLS: use SMTP_SECURITY=starttls or "
        "ssl (or set SMTP_SECURITY=none and SMTP_ALLOW_PLAINTEXT_AUTH=true)"
    )


def build(settings: Settings, subject: str, text: str, html: str, at: datetime) -> EmailMessage:
    """The message: UTF-8 subject and text, with the HTML part as an alternative."""
    assert settings.smtp_from is not None
    msg = EmailMessage(policy=_POLICY)
    msg["Subject"] = subject
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(settings.email_recipients)
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = make_msgid(domain=settings.smtp_from.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
    msg.set_content(text, charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def deliver(
    settings: Settings, subject: str, text: str, html: str, at: datetime, options: DeliveryOptions
) -> Outcome:
    """Build the message and send it (or say which variables are missing)."""
    gaps = missing(settings)
    if gaps:
        return Outcome(False, "e-mail is enabled but not configured: missing " + ", ".join(gaps), 0)
    return send(settings, build(settings, subject, text, html, at), options)


def send(settings: Settings, message: EmailMessage, options: DeliveryOptions) -> Outcome:
    """Deliver ``message`` to every recipient; up to ``options.attempts`` tries.

    Needs a configured ``settings`` (see ``missing``).
    """
    assert settings.smtp_host is not None
    where = f"SMTP {settings.smtp_host}:{settings.smtp_port} ({security(settings)})"
    refused = plaintext_auth_refusal(settings)
    if refused is not None:
        return Outcome(False, redact(f"{where}: {refused}", settings), 0)
    budget = Budget(options)
    error = "not attempted"
    attempt = 0
    while attempt < options.attempts:
        if attempt and not budget.pause(options.pause_before(attempt + 1)):
            error += "; gave up: delivery time budget spent"
            break
        attempt += 1
        with Deadline(budget) as deadline:
            try:
                _send_once(settings, message, budget.timeout(), options.ssl_context, deadline)
                return Outcome(True, None, attempt)
            except (_Permanent, _Unconfirmed) as e:  # another attempt would not help
                return Outcome(False, redact(f"{where}: {e}", settings), attempt)
            except Exception as e:  # every other failure may be transient: try again
                error = BUDGET_SPENT if deadline.spent() else _describe(e)
                log.info("e-mail attempt %d failed: %s", attempt, redact(error, settings))
                if deadline.spent():
                    break
    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
    return Outcome(False, redact(f"{where}: {error} ({tries})", settings), attempt)


class _Unconfirmed(Exception):
    """The message was sent whole but the server's answer did not come in time: it may
    have been delivered, so it is not sent again (a duplicate to every recipient)."""


class _Client(smtplib.SMTP):
    """``smtplib.SMTP`` whose connection ends at ``deadline``, and which knows whether
    the message itself was sent (then waits for the final answer until the deadline,
    not one read timeout: RFC 5321 gives servers minutes for it)."""

    deadline: Deadline | None = None
    message_sent = False
    _in_data = False

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        if self.deadline is not None:
            self.deadline.watch(sock)
        return cast(socket.socket, sock)

    def data(self, msg: Any) -> tuple[int, bytes]:
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False

    def send(self, s: Any) -> None:
        super().send(s)
        if self._in_data and isinstance(s, bytes):  # the message (commands are text)
            self.message_sent = True
            if self.deadline is not None and self.sock is not None:
                self.sock.settimeout(self.deadline.remaining())


class _TLSClient(_Client, smtplib.SMTP_SSL):
    """``_Client`` over implicit TLS."""


_fqdn: list[str] = []  # this host's name for EHLO, looked up once, in the background
_fqdn_lock = threading.Lock()
_fqdn_looked_up = threading.Event()
_FQDN_WAIT_S = 1.0  # what the first delivery waits for it; then an address literal


def _own_name(deadline: Deadline) -> str | None:
    """This host's fully qualified name as smtplib would send it in EHLO, or None while
    it is unknown: smtplib looks it up (reverse DNS) without any bound, so a hung
    resolver held a delivery beyond its budget. Looked up once per process in a daemon
    thread; the delivery that starts the lookup waits for it a moment, later ones not."""
    with _fqdn_lock:
        if not _fqdn_looked_up.is_set() and not _fqdn:
            _fqdn.append("")  # (looking)

            def look_up() -> None:
                try:
                    name = socket.getfqdn()
                    _fqdn[0] = name if "." in name else ""
                finally:
                    _fqdn_looked_up.set()

            threading.Thread(target=look_up, name="fqdn", daemon=True).start()
            first = True
        else:
            first = False
    if first:  # only the delivery that started the lookup waits for it
        _fqdn_looked_up.wait(min(_FQDN_WAIT_S, deadline.remaining() / 4))
    return _fqdn[0] or None


def _address_literal(sock: socket.socket) -> str:
    """The EHLO name of a host without a known name: its address on this connection."""
    host = str(sock.getsockname()[0]).partition("%")[0]  # (no link-local scope id)
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


def _connect(
    settings: Settings, mode: Security, timeout: float, tls: ssl.SSLContext, deadline: Deadline
) -> _Client:
    assert settings.smtp_host is not None
    name = _own_name(deadline)
    # a local_hostname given: smtplib does not look one up itself (see ``_own_name``)
    kwargs: dict[str, Any] = {"timeout": timeout, "local_hostname": name or "localhost"}
    client = _TLSClient(context=tls, **kwargs) if mode == "ssl" else _Client(**kwargs)
    client.deadline = deadline
    # the name TLS checks the certificate against (smtplib sets it when __init__ connects)
    client._host = settings.smtp_host  # type: ignore[attr-defined]
    try:
        # resolved within the deadline, then each address in turn, each connect
        # bounded by what is left of it (smtplib would resolve without a bound)
        code, msg = 0, b""
        found = addresses(settings.smtp_host, settings.smtp_port, deadline)
        for number, address in enumerate(found, 1):
            client.timeout = min(timeout, deadline.remaining())
            try:
                code, msg = client.connect(address, settings.smtp_port)
                break
            except OSError as e:
                client.close()
                # the next address only when this one could not be reached: a TLS or
                # SMTP failure is the server's answer, reported as it is
                reached = isinstance(e, ssl.SSLError | smtplib.SMTPException)
                if reached or number == len(found) or deadline.spent():
                    raise
        if name is None and client.sock is not None:
            client.local_hostname = _address_literal(client.sock)
    except BaseException:
        client.close()
        raise
    if code != 220:
        client.close()
        raise smtplib.SMTPConnectError(code, msg)
    return client


def _send_once(
    settings: Settings,
    message: EmailMessage,
    timeout: float,
    context: ssl.SSLContext | None,
    deadline: Deadline,
) -> None:
    assert settings.smtp_host is not None and settings.smtp_from is not None
    mode = security(settings)
    tls = context if context is not None else ssl.create_default_context()
    try:
        client = _connect(settings, mode, timeout, tls, deadline)
    except ssl.SSLCertVerificationError as e:
        raise _Permanent(f"TLS certificate not trusted: {e.verify_message}") from None
    try:
        _converse(settings, client, message, mode, tls)
    except (smtplib.SMTPResponseException, _Permanent):
        raise
    except Exception as e:
        if client.message_sent:
            why = BUDGET_SPENT if deadline.spent() else _describe(e)
            raise _Unconfirmed(
                f"the message was sent but the server did not confirm it ({why}); "
                "not sent again, since it may have arrived"
            ) from None
        raise


def _converse(
    settings: Settings,
    client: _Client,
    message: EmailMessage,
    mode: Security,
    tls: ssl.SSLContext,
) -> None:
    assert settings.smtp_from is not None
    try:
        client.ehlo()
        if mode == "starttls":
            if not client.has_extn("starttls"):
                raise _Permanent("the server does not offer STARTTLS (set SMTP_SECURITY?)")
            try:
                client.starttls(context=tls)
            except ssl.SSLCertVerificationError as e:
                raise _Permanent(f"TLS certificate not trusted: {e.verify_message}") from None
            client.ehlo()
        if settings.smtp_user and settings.smtp_password is not None:
            plaintext = plaintext_auth_refusal(settings)
            if plaintext is not None:  # checked in ``send`` already; never AUTH in clear
                raise _Permanent(plaintext)
            try:
                client.login(settings.smtp_user, settings.smtp_password.get_secret_value())
            except smtplib.SMTPAuthenticationError as e:
                raise _Permanent(
                    f"authentication as {settings.smtp_user!r} failed: {_reply(e)}"
                ) from None
            except smtplib.SMTPNotSupportedError:
                raise _Permanent(
                    "the server offers no authentication (unset SMTP_USER/SMTP_PASSWORD, "
                    "or use TLS)"
                ) from None
        try:
            refused = client.send_message(
                message, from_addr=settings.smtp_from, to_addrs=settings.email_recipients
            )
        except smtplib.SMTPNotSupportedError as e:  # e.g. non-ASCII address, no SMTPUTF8
            raise _Permanent(str(e)) from None
        except smtplib.SMTPRecipientsRefused as e:
            if all(400 <= code < 500 for code, _ in e.recipients.values()):
                raise  # each refused for now (greylisting, a full mailbox): try again
            raise _Permanent(f"every recipient was refused: {_refused(e.recipients)}") from None
        except smtplib.SMTPResponseException as e:
            if e.smtp_code >= 500:
                raise _Permanent(f"the server refused the message: {_reply(e)}") from None
            raise
        if refused:
            # the others got it: another attempt would send them a duplicate
            raise _Permanent(f"some recipients were refused: {_refused(refused)}")
    except BaseException:
        client.close()
        raise
    # the message was taken: an answer to QUIT other than 221 (or none) changes nothing
    # (raised, it would count as a failure and the message be sent again)
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    client.close()


_ENHANCED_STATUS = re.compile(rb"\s*([245]\.\d{1,3}\.\d{1,3})\b")


def _codes(code: int, message: bytes | str) -> str:
    """The reply's code and its enhanced status code (RFC 3463), e.g. ``550 5.7.1``: the
    server's own words are left out — delivery errors are shown to viewers, and a remote
    text may name internal hosts or policies (issue 13: "a status and an error class")."""
    raw = message.encode("utf-8", "replace") if isinstance(message, str) else message
    m = _ENHANCED_STATUS.match(raw)
    return f"{code} {m.group(1).decode()}" if m else str(code)


def _reply(e: smtplib.SMTPResponseException) -> str:
    return _codes(e.smtp_code, e.smtp_error)


def _refused(recipients: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{addr} ({_codes(code, msg)})" for addr, (code, msg) in sorted(recipients.items())
    )


def _describe(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return f"every recipient was refused for now: {_refused(e.recipients)}"
    if isinstance(e, smtplib.SMTPResponseException):
        return f"the server answered {_reply(e)}"
    if isinstance(e, smtplib.SMTPServerDisconnected):
        return (
            f"the server closed the connection ({e})"
            if str(e)
            else "the server closed the connection"
        )
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ssl.SSLError):
        return f"TLS error ({e.reason or e})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
