"""The browser session cookie and the checks of a password login, shared by the JSON
API's login and the web UI's login form (both set and clear the cookie, and check a
login, the same way).

Guarantees of ``password_login``: a login sent by a browser from another origin (or by
a browser that names no origin at all) is refused before any password is checked; the
attempt is throttled per user name and per client address (``accounts.LoginThrottle``,
one per app, in memory); the argon2 check runs in a worker thread, at most
``PASSWORD_CHECKS`` at a time, so logins never hold the event loop nor all CPUs.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from fastflow import accounts
from fastflow.accounts import Principal
from fastflow.db.engine import Database
from fastflow.errors import Forbidden

SESSION_COOKIE = "fastflow_session"
# argon2 checks that may run at once (each uses several threads and 64 MiB)
PASSWORD_CHECKS = max(1, (os.cpu_count() or 2) // 2)
CROSS_SITE = "login refused: the login was sent from another site; open this server's login page"
NO_ORIGIN = (
    "login refused: the browser sent neither Origin nor Referer; open this server's login page"
)


def set_session_cookie(response: Response, token: str, request: Request) -> None:
    """HttpOnly, SameSite=Lax, Secure over https, as long as the session lives."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        path="/",
        secure=request.url.scheme == "https",
        max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


# --- login CSRF ---------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_Origin = tuple[str, str, int | None]  # scheme, host (lower case), explicit port or None


def _origin(url: str) -> _Origin | None:
    """(scheme, host, port) of an origin or URL; the scheme's default port is None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), None if port == _DEFAULT_PORTS[scheme] else port


def _own_origins(request: Request, base_url: str) -> set[_Origin]:
    """The origins of this server: as the request reached it (Host header; also over
    https, for a proxy that terminates TLS) and ``FASTFLOW_BASE_URL``."""
    own: set[_Origin] = set()
    host = request.headers.get("host")
    if host:
        for scheme in {request.url.scheme, "https"}:
            found = _origin(f"{scheme}://{host}")
            if found is not None:
                own.add(found)
    configured = _origin(base_url)
    if configured is not None:
        own.add(configured)
    return own


def _from_browser(request: Request) -> bool:
    """Browsers send Fetch Metadata or a ``Mozilla/`` user agent; scripts (curl, httpx)
    do not."""
    headers = request.headers
    return (
        "sec-fetch-site" in headers
        or "sec-fetch-mode" in headers
        or headers.get("user-agent", "").startswith("Mozilla/")
    )


def check_login_origin(request: Request, base_url: str) -> None:
    """Refuse (``Forbidden``) a login whose ``Origin`` (else ``Referer``) is not this
    server, or a browser's login that names neither. Scripts that send neither (curl,
    httpx) are not browsers and may log in: they carry no victim's cookies."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent:
        if _from_browser(request):
            raise Forbidden(NO_ORIGIN)
        return
    origin = _origin(sent)
    if origin is None or origin not in _own_origins(request, base_url):
        raise Forbidden(CROSS_SITE)


# --- throttling and the password check ----------------------------------------------

_throttle_lock = threading.Lock()
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def login_throttle(request: Request) -> accounts.LoginThrottle:
    """The app's login throttle (created on first use)."""
    state = request.app.state
    with _throttle_lock:
        throttle = getattr(state, "login_throttle", None)
        if not isinstance(throttle, accounts.LoginThrottle):
            throttle = accounts.LoginThrottle()
            state.login_throttle = throttle
        return throttle


def _password_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    with _throttle_lock:
        limiter = _limiters.get(loop)
        if limiter is None:
            limiter = anyio.CapacityLimiter(PASSWORD_CHECKS)
            _limiters[loop] = limiter
        return limiter


async def password_login(
    request: Request, db: Database, base_url: str, username: str, password: str
) -> tuple[str, Principal]:
    """Check origin, throttle and password; return the new session token and its user.

    Raises ``Forbidden`` (another site), ``accounts.TooManyLogins`` (throttled) or
    ``AuthError`` (wrong credentials, disabled user)."""
    check_login_origin(request, base_url)
    throttle = login_throttle(request)
    host = request.client.host if request.client else None
    attempt = throttle.begin(username, accounts.address_key(host))
    token, principal = await anyio.to_thread.run_sync(
        functools.partial(accounts.login, db, username, password),
        limiter=_password_limiter(),
    )
    throttle.succeeded(attempt)
    return token, principal
