"""Is every outside part fastflow depends on reachable? ``fastflow doctor`` and the Docker
line of ``GET /api/health`` (issue 15).

Five checks — database, S3, SMTP, Teams, Docker — each ``ok``, ``error`` or ``skipped``
(not configured, or not used) with one line saying why. Guarantees:

- **read-only and silent**: nothing is written to the database, the bucket (HEAD only),
  the mail server (connect, EHLO, STARTTLS and login when configured, QUIT: no mail) or
  Teams (one HEAD of the webhook's origin ``https://host/``: the webhook path and its token
  never leave the process, nothing can be posted); a missing SQLite file is not created;
- **bounded time**: every check runs in its own daemon thread with short library
  timeouts and is reported ``error`` when it has no answer ``timeout + 1`` s after it
  started; the network checks run concurrently once the database answered (its stored
  setting overrides apply to S3, SMTP and Teams, as in ``fastflow serve``);
- **no secret in the text**: every detail passes the one redactor
  (``security.redact``); URLs are shown as ``scheme://host[:port]`` (no user, password,
  path or query), the Teams webhook by its host only.

The Docker daemon is found as Docker finds it (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``, else the current Docker context, else the local socket); it is
checked only when a pipeline uses it: ``EXECUTOR=docker`` or ``"executor": "docker"`` in a
``pipeline.json``.
"""

from __future__ import annotations

import importlib
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from fastflow.config import Settings, mask_url_password
from fastflow.security import redact

Status = Literal["ok", "error", "skipped"]
T = TypeVar("T")
CHECK_TIMEOUT_S = 5.0  # per network operation; a check ends at the latest 1 s after it
HARD_DEADLINE_GRACE_S = 1.0
HEALTH_DOCKER_TIMEOUT_S = 2.0  # /api/health must stay fast
HEALTH_DOCKER_TTL_S = 5.0  # one daemon request per this many seconds, however many polls
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_DOCKER_API_VERSION = "1.24"  # fixed: no version negotiation request before the real one


@dataclass(frozen=True)
class Check:
    """One line of the report: ``check`` names the part, ``detail`` says why."""

    check: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


def run_checks(
    settings: Settings,
    *,
    timeout: float = CHECK_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> list[Check]:
    """Every check, in the order database, s3, smtp, teams, docker. ``settings`` are the
    environment's; the database's stored overrides are applied when it answers.
    ``ssl_context`` replaces the system's trust store for SMTP (tests)."""
    [(database, effective)] = _bounded(
        [("database", lambda: check_database(settings, timeout))], timeout
    )
    used = effective if effective is not None else settings
    tasks: list[tuple[str, Callable[[], tuple[Check, None]]]] = [
        ("s3", lambda: (check_s3(used, timeout), None)),
        ("smtp", lambda: (check_smtp(used, timeout, ssl_context), None)),
        ("teams", lambda: (check_teams(used, timeout), None)),
        ("docker", lambda: (check_docker(used, timeout), None)),
    ]
    checks = [database] + [c for c, _ in _bounded(tasks, timeout)]
    return [Check(c.check, c.status, redact(redact(c.detail, used), settings)) for c in checks]


def _bounded(
    tasks: list[tuple[str, Callable[[], tuple[Check, T]]]], timeout: float = CHECK_TIMEOUT_S
) -> list[tuple[Check, T | None]]:
    """Run ``tasks`` in daemon threads (a hung library call cannot keep the process alive)
    and wait at most ``timeout + HARD_DEADLINE_GRACE_S`` for all of them."""
    lock = threading.Lock()
    done: dict[str, tuple[Check, T | None]] = {}

    def work(name: str, fn: Callable[[], tuple[Check, T]]) -> None:
        try:
            result: tuple[Check, T | None] = fn()
        except Exception as e:  # a bug must not hide the other checks' answers
            result = (Check(name, "error", f"unexpected error: {type(e).__name__}"), None)
        with lock:
            done[name] = result

    threads = [
        threading.Thread(target=work, args=task, name=f"doctor-{task[0]}", daemon=True)
        for task in tasks
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout + HARD_DEADLINE_GRACE_S
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    with lock:
        return [
            done.get(name) or (Check(name, "error", f"no answer within {timeout:g} s"), None)
            for name, _ in tasks
        ]


# --- database -------------------------------------------------------------------------


def check_database(settings: Settings, timeout: float) -> tuple[Check, Settings | None]:
    """Connect, read the schema revision; with it, the effective settings (environment
    plus stored overrides; None when they could not be read)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fastflow.db.engine import current_revision, head_revision, sqlite_file

    shown = mask_url_password(settings.database_url)
    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        return _new_sqlite(shown, path), None
    try:
        engine = _engine(settings, timeout)
        try:
            revision = current_revision(engine)
        finally:
            engine.dispose()
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        return Check(
            "database", "error", f"{shown}: {reason[0] if reason else type(e).__name__}"
        ), None
    head = head_revision()
    if revision is None:
        return Check(
            "database", "ok", f"{shown} (empty: tables are created at the next start)"
        ), None
    if revision == head:
        state = f"migrations at head {head}"
    elif revision.isdigit() and revision < head:
        state = f"migrations pending: {revision} -> {head}, applied at the next start"
    else:
        return Check(
            "database",
            "error",
            f"{shown}: schema {revision} is newer than this fastflow knows ({head}): upgrade "
            "fastflow",
        ), None
    effective, note = _effective_settings(settings)
    return Check("database", "ok", f"{shown} ({state}){note}"), effective


def _new_sqlite(shown: str, path: Path) -> Check:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return Check("database", "ok", f"{shown} (no database yet: created at the first start)")
    return Check("database", "error", f"{shown}: cannot create it ({folder} is not writable)")


def _engine(settings: Settings, timeout: float) -> Any:
    """The engine fastflow uses; PostgreSQL with a connect timeout and no pool."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from fastflow.db.engine import make_engine, normalise_url

    url = make_url(normalise_url(settings.database_url))
    if url.get_backend_name() == "postgresql":
        seconds = max(1, ceil(timeout))
        return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": seconds})
    return make_engine(settings)


def _effective_settings(settings: Settings) -> tuple[Settings | None, str]:
    from fastflow.db import settings_store
    from fastflow.db.engine import Database

    db = Database(settings)
    try:
        overrides = settings_store.load_overrides(db, settings)
        return settings_store.effective(settings, overrides), ""
    except Exception as e:  # the environment's values are then checked: say so
        return (
            None,
            f"; stored settings not applied ({type(e).__name__}): checking the environment's",
        )
    finally:
        db.dispose()


# --- S3 -------------------------------------------------------------------------------


def check_s3(settings: Settings, timeout: float) -> Check:
    """HEAD the bucket (no object is written or read), one attempt, short timeouts."""
    if not settings.s3_backup_enabled:
        return Check("s3", "skipped", "S3 backup disabled (S3_BACKUP_ENABLED=false)")
    from fastflow.archive import s3 as archive
    from fastflow.errors import ArchiveNotConfigured

    try:
        client = archive.make_client(
            settings, connect_timeout=timeout, read_timeout=timeout, attempts=1
        )
    except ArchiveNotConfigured as e:
        return Check("s3", "error", str(e))
    except Exception as e:  # a value boto3 refuses
        return Check("s3", "error", f"cannot create the S3 client: {type(e).__name__}")
    where = f"bucket '{settings.s3_bucket}' at {origin(settings.s3_endpoint_url or '')}"
    try:
        client.head_bucket(Bucket=settings.s3_bucket)
    except Exception as e:
        answer = getattr(e, "response", None) or {}
        if answer.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:  # HEAD: no body
            return Check("s3", "error", f"{where}: the bucket does not exist")
        return Check("s3", "error", str(archive.describe_error(e, settings)))
    return Check("s3", "ok", f"{where} reachable (HEAD bucket)")


# --- SMTP -----------------------------------------------------------------------------


def check_smtp(
    settings: Settings, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> Check:
    """Connect, EHLO, STARTTLS and login when configured, QUIT: no mail is sent."""
    if not settings.email_enabled:
        return Check("smtp", "skipped", "e-mail disabled (EMAIL_ENABLED=false)")
    from fastflow.notify import email

    gaps = email.missing(settings)
    if gaps:
        return Check(
            "smtp", "error", "e-mail is enabled but not configured: missing " + ", ".join(gaps)
        )
    assert settings.smtp_host is not None
    mode = email.security(settings)
    where = f"{settings.smtp_host}:{settings.smtp_port} ({mode})"
    refused = email.plaintext_auth_refusal(settings)
    if refused is not None:
        return Check("smtp", "error", f"{where}: {refused}")
    try:
        steps = _smtp_session(settings, mode, timeout, ssl_context or ssl.create_default_context())
    except _SmtpRefused as e:
        return Check("smtp", "error", f"{where}: {e}")
    except Exception as e:
        return Check("smtp", "error", f"{where}: {_smtp_reason(e, timeout)}")
    return Check("smtp", "ok", f"{where}: {', '.join(steps)} ok (no mail sent)")


class _SmtpRefused(Exception):
    """The server answered, but not as fastflow needs (no STARTTLS, login refused)."""


def _smtp_session(settings: Settings, mode: str, timeout: float, tls: ssl.SSLContext) -> list[str]:
    assert settings.smtp_host is not None
    steps = ["connect"]
    client: smtplib.SMTP
    if mode == "ssl":
        client = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=timeout, context=tls
        )
        steps = ["TLS connect"]
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    with client:
        client.ehlo()
        steps.append("EHLO")
        if mode == "starttls":
            if not client.has_extn("starttls"):
                raise _SmtpRefused("the server does not offer STARTTLS (set SMTP_SECURITY?)")
            client.starttls(context=tls)
            client.ehlo()
            steps.append("STARTTLS")
        if settings.smtp_user and settings.smtp_password is not None:
            try:
                client.login(settings.smtp_user, settings.smtp_password.get_secret_value())
            except smtplib.SMTPAuthenticationError as e:
                raise _SmtpRefused(
                    f"authentication as {settings.smtp_user!r} failed: {_reply(e)}"
                ) from None
            except smtplib.SMTPNotSupportedError:
                raise _SmtpRefused(
                    "the server offers no authentication (unset SMTP_USER/SMTP_PASSWORD, or "
                    "use TLS)"
                ) from None
            steps.append(f"login as {settings.smtp_user!r}")
    steps.append("QUIT")  # ``with`` sent it
    return steps


def _reply(e: smtplib.SMTPResponseException) -> str:
    raw = e.smtp_error
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f"{e.smtp_code} {' '.join(text.split())}"[:200]


def _smtp_reason(e: BaseException, timeout: float) -> str:
    if isinstance(e, smtplib.SMTPResponseException):
        return f"the server answered {_reply(e)}"
    if isinstance(e, smtplib.SMTPServerDisconnected):
        if any(isinstance(c, TimeoutError) for c in _chain(e)):  # smtplib's wording
            return f"timed out after {timeout:g} s"
        return "the server closed the connection"
    return network_reason(e, timeout)


# --- Teams ----------------------------------------------------------------------------


def check_teams(settings: Settings, timeout: float) -> Check:
    """One HEAD of ``scheme://host[:port]/`` of the webhook: DNS, route, proxy and TLS
    trust as the real POST uses them (same HTTP client settings); any HTTP answer but a
    gateway error means reachable. The webhook itself is never called, so a revoked
    token is not detected (the settings page's test notification does that)."""
    if not settings.teams_enabled:
        return Check("teams", "skipped", "Teams disabled (TEAMS_ENABLED=false)")
    if settings.teams_webhook_url is None:
        return Check(
            "teams", "error", "Teams is enabled but not configured: missing TEAMS_WEBHOOK_URL"
        )
    import httpx

    from fastflow.notify.teams import check_url
    from fastflow.security import mask_url

    url = settings.teams_webhook_url.get_secret_value()
    host = origin(url)
    refused = check_url(url)
    if refused is not None:
        return Check("teams", "error", refused.replace(mask_url(url), host))
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(timeout)) as client:
            status = client.head(host + "/").status_code
    except Exception as e:
        return Check("teams", "error", f"{host}: {network_reason(e, timeout)}")
    if status in (502, 503, 504):
        return Check("teams", "error", f"{host}: HTTP {status} (gateway or server unavailable)")
    return Check(
        "teams",
        "ok",
        f"{host} reachable (HEAD / answered HTTP {status}; the webhook is not called)",
    )


# --- Docker ---------------------------------------------------------------------------


def docker_users(settings: Settings) -> str | None:
    """Who uses the Docker daemon (``EXECUTOR=docker``, pipelines), or None: nobody."""
    from fastflow.runs.pipelines import discover

    pipelines = discover(settings.pipelines_dir)
    names = [p.name for p in pipelines if (p.config.executor or settings.executor) == "docker"]
    if settings.executor == "docker" and len(names) == len(pipelines):
        return "EXECUTOR=docker"
    if not names:
        return None
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ("pipeline " if len(names) == 1 else "pipelines ") + ", ".join(names[:3]) + more


def check_docker(
    settings: Settings,
    timeout: float,
    *,
    public: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Check:
    """``skipped`` when no pipeline uses Docker; else one ``GET /version`` of the daemon.
    ``public`` (for ``/api/health``) names the daemon by scheme and host only and leaves
    out its version and the pipelines' names."""
    try:
        users = docker_users(settings)
    except OSError as e:  # an unreadable PIPELINES_DIR
        return Check("docker", "error", f"cannot tell which pipelines use Docker: {e.strerror}")
    if users is None:
        return Check(
            "docker",
            "skipped",
            'not used by any pipeline (EXECUTOR=local, no pipeline.json says "executor": "docker")',
        )
    env = os.environ if environ is None else environ
    where = docker_host_shown(docker_host(env), public=public)
    try:
        version = _docker_version(timeout, env)
    except Exception as e:
        return Check(
            "docker",
            "error",
            f"cannot reach the daemon at {where}: {docker_reason(e, timeout, public)}",
        )
    if public:
        return Check("docker", "ok", f"daemon at {where} reachable")
    return Check(
        "docker",
        "ok",
        f"{where}: Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}), "
        f"used by {users}",
    )


def _docker_version(timeout: float, environ: Mapping[str, str]) -> dict[str, Any]:
    docker = importlib.import_module("docker")  # lazily: fastflow --help stays fast
    client = docker.from_env(
        timeout=timeout, version=_DOCKER_API_VERSION, environment=dict(environ)
    )
    try:
        answer: dict[str, Any] = client.version(api_version=False)
        return answer
    finally:
        client.close()


def docker_host(environ: Mapping[str, str]) -> str:
    """Where the daemon is looked for: ``DOCKER_HOST``, the current context, the socket."""
    if environ.get("DOCKER_HOST"):
        return environ["DOCKER_HOST"]
    try:
        docker = importlib.import_module("docker")
        context = docker.context.ContextAPI.get_current_context()
        if context is not None and context.Host:
            return str(context.Host)
    except Exception:
        pass
    return DEFAULT_DOCKER_HOST


def docker_host_shown(host: str, *, public: bool) -> str:
    """``host`` without user or path (a unix socket keeps its path unless ``public``)."""
    if "://" not in host:
        host = "tcp://" + host
    scheme = host.split("://", 1)[0].lower()
    if scheme in ("unix", "http+unix", "npipe"):
        return "the local socket" if public else host
    return origin(host)


def docker_reason(e: BaseException, timeout: float, public: bool = False) -> str:
    """Why the daemon did not answer, in a few fixed words (no path, no remote text)."""
    for cause in _chain(e):
        name = type(cause).__name__
        if name == "TLSParameterError":
            return "TLS settings incomplete (DOCKER_CERT_PATH needs ca.pem, cert.pem and key.pem)"
        if name == "APIError":
            status = getattr(getattr(cause, "response", None), "status_code", "?")
            return f"the daemon answered HTTP {status}"
        if name == "DockerException" and "protocol" in str(cause).lower():
            return "DOCKER_HOST is not a valid address"
    reason = network_reason(e, timeout)
    if reason == "permission denied" and not public:
        return "permission denied (is this user allowed to use the Docker socket?)"
    return reason


# --- shared ---------------------------------------------------------------------------


def origin(url: str) -> str:
    """``scheme://host[:port]``: never a user, password, path or query."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and every exception it wraps (causes, contexts, ``reason``, exception args)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]
        todo.extend(x for x in nested if isinstance(x, BaseException))


def network_reason(e: BaseException, timeout: float) -> str:
    """The class of a network failure in a few fixed words (never the remote's text)."""
    chain = list(_chain(e))
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.verify_message})"
    checks: list[tuple[type[BaseException], str]] = [
        (socket.gaierror, "cannot resolve the host name"),
        (ConnectionRefusedError, "connection refused"),
        (FileNotFoundError, "no such socket"),
        (PermissionError, "permission denied"),
        (ConnectionResetError, "connection reset"),
        (ssl.SSLError, "TLS error"),
        (TimeoutError, f"timed out after {timeout:g} s"),
    ]
    for kind, words in checks:
        if any(isinstance(c, kind) for c in chain):
            return words
    if any("timeout" in type(c).__name__.lower() for c in chain):
        return f"timed out after {timeout:g} s"
    if any(isinstance(c, OSError) and c.strerror for c in chain):
        first = next(c for c in chain if isinstance(c, OSError) and c.strerror)
        assert isinstance(first, OSError)
        return str(first.strerror).lower()
    return f"cannot connect ({type(e).__name__})"


class DockerHealth:
    """The Docker line of ``/api/health``, cached for ``ttl`` seconds: however many polls,
    at most one daemon request (and one scan of the pipelines) per ``ttl``; while one poll
    refreshes an expired answer, the others get the previous one instead of waiting.
    ``get`` returns None when no pipeline uses Docker."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        *,
        ttl: float = HEALTH_DOCKER_TTL_S,
        timeout: float = HEALTH_DOCKER_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.ttl, self.timeout, self._clock = ttl, timeout, clock
        self._lock = threading.Lock()
        self._refresh = threading.Lock()
        self._answer: Check | None = None
        self._at: float | None = None

    def _fresh(self) -> bool:
        return self._at is not None and self._clock() - self._at < self.ttl

    def get(self) -> dict[str, str] | None:
        with self._lock:
            if self._fresh():
                return self._public(self._answer)
            stale = self._at is not None
        if not self._refresh.acquire(blocking=not stale):
            with self._lock:  # another poll is refreshing: the previous answer
                return self._public(self._answer)
        try:
            with self._lock:
                if self._fresh():  # refreshed while this poll waited
                    return self._public(self._answer)
            settings = self._settings()
            try:
                answer = check_docker(settings, self.timeout, public=True)
            except Exception as e:  # health must answer whatever happens here
                answer = Check("docker", "error", f"check failed ({type(e).__name__})")
            answer = Check(answer.check, answer.status, redact(answer.detail, settings))
            with self._lock:
                self._answer, self._at = answer, self._clock()
            return self._public(answer)
        finally:
            self._refresh.release()

    @staticmethod
    def _public(answer: Check | None) -> dict[str, str] | None:
        if answer is None or answer.status == "skipped":
            return None
        return {"status": answer.status, "detail": answer.detail}
