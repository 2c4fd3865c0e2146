"""A real SMTP server (aiosmtpd) that captures messages, with optional AUTH, STARTTLS and TLS.

Clients trust the self-signed certificate with::

    ctx = ssl.create_default_context(cafile=str(capture.cert_path))
    smtplib.SMTP_SSL("127.0.0.1", capture.port, context=ctx)        # implicit TLS
    smtplib.SMTP("127.0.0.1", capture.port).starttls(context=ctx)   # STARTTLS

The certificate is valid for ``127.0.0.1`` and ``localhost`` (subjectAltName), so hostname
checking stays on.  Alternatively set ``SSL_CERT_FILE=<cert_path>`` for code that builds its
context with ``ssl.create_default_context()``.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import logging
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.harness.ports import LOCALHOST, free_port

# aiosmtpd itself touches its deprecated Session.login_data on every successful AUTH.
logging.getLogger("mail.log").addFilter(
    lambda record: "login_data is deprecated" not in record.getMessage()
)

_cert_lock = threading.Lock()
_cert_pair: tuple[Path, Path] | None = None


def self_signed_cert() -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of a per-process self-signed cert for 127.0.0.1."""
    global _cert_pair
    with _cert_lock:
        if _cert_pair is None:
            folder = Path(tempfile.mkdtemp(prefix="fastflow-test-tls-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            cert, key = folder / "cert.pem", folder / "key.pem"
            try:
                _write_cert_cryptography(cert, key)
            except ImportError:
                _write_cert_openssl(cert, key)
            _cert_pair = (cert, key)
        return _cert_pair


def _write_cert_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_cert_openssl(cert_path: Path, key_path: Path) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "7", "-subj", "/CN=localhost",
            "-addext", f"subjectAltName=DNS:localhost,IP:{LOCALHOST}",
            "-keyout", str(key_path), "-out", str(cert_path),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


@dataclass
class CapturedMail:
    """One message accepted by ``SmtpCapture``."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    auth_login: str | None = None
    tls: bool = False
    peer: Any = field(default=None, repr=False)
    ehlo_name: str | None = None  # what the client said in EHLO/HELO


def _is_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


class _Handler:
    def __init__(self, owner: SmtpCapture) -> None:
        self.owner = owner

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.owner.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rejection = self.owner._take_rejection()
        if rejection is not None:
            return rejection
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes):
            raw = envelope.content
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.owner._add(
            CapturedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                raw=raw,
                message=message,
                auth_login=login,
                tls=_is_tls(server),
                peer=session.peer,
                ehlo_name=session.host_name,
            )
        )
        return "250 Message accepted for delivery"


class SmtpCapture:
    """aiosmtpd server on 127.0.0.1 that records every message; running from construction on.

    ``username``/``password`` enable AUTH PLAIN/LOGIN (allowed without TLS);
    ``auth_required`` rejects MAIL FROM before a successful AUTH with 530.  ``starttls`` offers
    STARTTLS (``require_starttls`` makes it mandatory); ``implicit_tls`` wraps the whole
    connection in TLS (SMTPS).  ``stop()``/``start()`` take the server down/up on the same port.
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        auth_required: bool = False,
        starttls: bool = False,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        port: int | None = None,
    ) -> None:
        if auth_required and username is None:
            username, password = "fastflow", "fastflow-secret"
        self.username = username
        self.password = password or ""
        self.auth_required = auth_required
        self.starttls = starttls or require_starttls
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.host = LOCALHOST
        self.port: int = port or free_port()
        self.cert_path, self.key_path = self_signed_cert()
        self._cond = threading.Condition()
        self._messages: list[CapturedMail] = []
        self._reject_reply: str | None = None
        self._reject_times: int | None = None
        self._controller: Controller | None = None
        self.start()

    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for clients that trusts this server's certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        if ok:
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def start(self) -> SmtpCapture:
        """Start listening (no-op if running)."""
        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {
            "server_hostname": "localhost",
            "auth_require_tls": False,
            "ready_timeout": 10.0,
        }
        if self.username is not None:
            kwargs["authenticator"] = self._authenticate
        if self.starttls:
            kwargs["tls_context"] = self._server_context()
            kwargs["require_starttls"] = self.require_starttls
        if self.implicit_tls:
            kwargs["ssl_context"] = self._server_context()
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening; connections are refused until ``start()``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    close = stop

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._controller is not None

    def reject(self, reply: str = "554 5.6.0 Rejected by test", times: int | None = 1) -> None:
        """Answer the next ``times`` DATA commands with ``reply`` (``None`` = until cleared)."""
        with self._cond:
            self._reject_reply, self._reject_times = reply, times

    def clear(self) -> None:
        """Forget captured messages and any pending rejection."""
        with self._cond:
            self._messages.clear()
            self._reject_reply, self._reject_times = None, None

    def _take_rejection(self) -> str | None:
        with self._cond:
            reply = self._reject_reply
            if reply is not None and self._reject_times is not None:
                self._reject_times -= 1
                if self._reject_times <= 0:
                    self._reject_reply, self._reject_times = None, None
            return reply

    def _add(self, mail: CapturedMail) -> None:
        with self._cond:
            self._messages.append(mail)
            self._cond.notify_all()

    @property
    def messages(self) -> list[CapturedMail]:
        """Snapshot of the messages accepted so far."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMail]:
        """Block until at least ``count`` messages arrived; raise ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} message(s), got {len(self._messages)} in {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self._messages)

    def __enter__(self) -> SmtpCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
