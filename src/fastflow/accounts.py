"""Users, API tokens, browser sessions and login throttling.

Guarantees: passwords are checked against argon2 hashes only (an unknown or disabled user
costs the same hash check); a disabled user can neither log in nor use their sessions or
their API tokens; disabling, deleting or changing the password of a user ends all their
sessions at once; the last enabled admin can be neither disabled nor deleted; expired
sessions and tokens authenticate nothing and their rows are purged at each login.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from fastflow import security
from fastflow.db import cache as readcache
from fastflow.db.engine import Database
from fastflow.db.models import ApiToken, User, WebSession, utcnow
from fastflow.errors import AuthError as AuthError
from fastflow.errors import FastflowError
from fastflow.errors import Forbidden as Forbidden
from fastflow.errors import InvalidInput as InvalidInput

SESSION_LIFETIME = timedelta(hours=12)
# expired tokens stay listed (as expired) this long, then their rows are purged
EXPIRED_TOKEN_GRACE = timedelta(days=7)
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")
MIN_PASSWORD = 8
WRONG_CREDENTIALS = "wrong username or password"


@functools.cache
def _dummy_hash() -> str:
    return security.hash_password("fastflow-timing-equaliser")


class Role(enum.StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (browser session) or an API token."""

    name: str
    role: Role
    kind: str  # "session" or "token"
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class UserNotFound(FastflowError):
    """No user of that name exists (CLI exit status 1)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"no user {username!r}", hint="see: fastflow user list")


class LastAdmin(FastflowError):
    """The action would leave no enabled admin (CLI exit status 1)."""


class TooManyLogins(FastflowError):
    """Too many failed logins for a user name or from a client address (HTTP 429);
    ``retry_after`` is the wait in whole seconds (the ``Retry-After`` header)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed logins for this user or from this address: "
            f"try again in {retry_after} s"
        )
        self.retry_after = retry_after


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise InvalidInput(f"role must be 'admin' or 'viewer', not {raw!r}") from None


_DURATION = re.compile(r"^\s*([0-9]{1,7})\s*([mhd])\s*$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
MAX_TOKEN_LIFETIME = timedelta(days=3650)


def parse_duration(raw: str) -> timedelta:
    """``30m``, ``12h`` or ``90d`` as a ``timedelta`` (1 minute to 3650 days)."""
    match = _DURATION.match(raw)
    if match is None:
        raise InvalidInput(f"duration must be a number with m, h or d (30m, 12h, 90d), not {raw!r}")
    value = int(match.group(1)) * _UNITS[match.group(2)]
    if not timedelta(minutes=1) <= value <= MAX_TOKEN_LIFETIME:
        raise InvalidInput(f"duration must be between 1m and 3650d, not {raw!r}")
    return value


# --- users --------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    """A user as ``fastflow user list`` shows it (never the password hash)."""

    name: str
    role: str
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None


def count_users(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password must have at least {MIN_PASSWORD} characters")


def create_user(db: Database, username: str, password: str, role: str) -> User:
    if not _USERNAME.match(username):
        raise InvalidInput("username: 1-100 characters of letters, digits, '.', '_', '@', '-'")
    _check_password(password)
    with db.session() as s:
        if s.scalar(select(User).where(User.username == username)) is not None:
            raise InvalidInput(f"user {username!r} exists already")
        user = User(
            username=username,
            password_hash=security.hash_password(password),
            role=parse_role(role).value,
        )
        s.add(user)
    return user


def list_users(db: Database) -> list[UserInfo]:
    with db.session() as s:
        return [
            UserInfo(u.username, u.role, u.created_at, u.disabled_at, u.last_login_at)
            for u in s.scalars(select(User).order_by(User.username))
        ]


def require_user(db: Database, username: str) -> None:
    """Raise ``UserNotFound`` unless ``username`` exists."""
    with db.session() as s:
        if s.scalar(select(User.id).where(User.username == username)) is None:
            raise UserNotFound(username)


def _user(s: Session, username: str) -> User:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserNotFound(username)
    return user


def _end_sessions(s: Session, user_id: int) -> int:
    result = s.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)


def _guard_last_admin(s: Session, user: User, action: str) -> None:
    """Refuse to disable or delete the only enabled admin."""
    if user.role != Role.ADMIN.value or user.disabled_at is not None:
        return
    others = s.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.disabled_at.is_(None), User.id != user.id)
    )
    if not others:
        raise LastAdmin(
            f"cannot {action} {user.username!r}: it is the last enabled admin "
            "(create or enable another admin first)"
        )


def set_password(db: Database, username: str, password: str) -> None:
    """Change a user's password; their sessions end (they log in again)."""
    _check_password(password)
    hashed = security.hash_password(password)
    with db.session() as s:
        user = _user(s, username)
        user.password_hash = hashed
        _end_sessions(s, user.id)
    readcache.invalidate()


def disable_user(db: Database, username: str) -> bool:
    """Disable a user: their sessions end now, their tokens stop working, they cannot log
    in. Returns False when the user was disabled already."""
    with db.session() as s:
        user = _user(s, username)
        if user.disabled_at is not None:
            return False
        _guard_last_admin(s, user, "disable")
        user.disabled_at = utcnow()
        _end_sessions(s, user.id)
    readcache.invalidate()
    return True


def enable_user(db: Database, username: str) -> bool:
    """Enable a disabled user; returns False when the user was enabled already."""
    with db.session() as s:
        user = _user(s, username)
        if user.disabled_at is None:
            return False
        user.disabled_at = None
    readcache.invalidate()
    return True


def delete_user(db: Database, username: str) -> int:
    """Delete a user: their sessions end and their tokens are revoked (returned: how many
    tokens were revoked)."""
    with db.session() as s:
        user = _user(s, username)
        _guard_last_admin(s, user, "delete")
        _end_sessions(s, user.id)
        revoked = s.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        # the id of a deleted row may be reused: no token may point at a later user
        s.execute(update(ApiToken).where(ApiToken.user_id == user.id).values(user_id=None))
        s.delete(user)
    readcache.invalidate()
    return int(getattr(revoked, "rowcount", 0) or 0)


# --- sessions -----------------------------------------------------------------------


def purge_expired(db: Database, now: datetime | None = None) -> None:
    """Delete expired sessions, and tokens expired more than ``EXPIRED_TOKEN_GRACE`` ago."""
    now = now or utcnow()
    with db.session() as s:
        s.execute(delete(WebSession).where(WebSession.expires_at <= now))
        s.execute(delete(ApiToken).where(ApiToken.expires_at <= now - EXPIRED_TOKEN_GRACE))


def login(db: Database, username: str, password: str) -> tuple[str, Principal]:
    """Check the password; return a new session token (for the cookie) and its caller.

    Slow on purpose (argon2): call it off the event loop. Expired sessions are purged."""
    now = utcnow()
    purge_expired(db, now)
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == username))
        # an unknown user costs the same hash check, so timing does not reveal user names
        stored = user.password_hash if user is not None else _dummy_hash()
        if not security.verify_password(stored, password) or user is None:
            raise AuthError(WRONG_CREDENTIALS)
        if user.disabled_at is not None:
            raise AuthError(f"user {username!r} is disabled")
        token = secrets.token_urlsafe(32)
        row = WebSession(
            id_hash=security.token_hash(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=now + SESSION_LIFETIME,
        )
        s.add(row)
        user.last_login_at = now
        return token, Principal(user.username, Role(user.role), "session", row.csrf_token)


def logout(db: Database, token: str) -> None:
    with db.session() as s:
        row = s.get(WebSession, security.token_hash(token))
        if row is not None:
            s.delete(row)
    readcache.invalidate()


def session_principal(db: Database, token: str, now: datetime | None = None) -> Principal | None:
    """The user of a live session; None for an unknown or expired session or a disabled
    user (an expired session's row is deleted)."""
    now = now or utcnow()
    with db.session() as s:
        row = s.get(WebSession, security.token_hash(token))
        if row is None:
            return None
        if row.expires_at <= now:
            s.delete(row)
            return None
        user = s.get(User, row.user_id)
        if user is None or user.disabled_at is not None:
            return None
        return Principal(user.username, Role(user.role), "session", row.csrf_token)


# --- API tokens ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``fastflow token list`` shows it (never its value)."""

    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None
    user: str | None

    def state(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


def create_token(
    db: Database,
    name: str,
    role: str,
    *,
    expires_in: timedelta | None = None,
    username: str | None = None,
) -> str:
    """Create an API token; the clear text is returned once and never stored. With
    ``expires_in`` it stops working after that time; with ``username`` it belongs to that
    user (it stops working while the user is disabled, and is revoked with them)."""
    if not name.strip() or len(name) > 100:
        raise InvalidInput("token name must be 1-100 characters")
    checked_role = parse_role(role).value
    token = security.new_token()
    with db.session() as s:
        user_id = _user(s, username).id if username is not None else None
        s.add(
            ApiToken(
                name=name.strip(),
                token_hash=security.token_hash(token),
                prefix=token[:10],
                role=checked_role,
                expires_at=utcnow() + expires_in if expires_in is not None else None,
                user_id=user_id,
            )
        )
    return token


def list_tokens(db: Database) -> list[TokenInfo]:
    with db.session() as s:
        names = {uid: name for uid, name in s.execute(select(User.id, User.username))}
        return [
            TokenInfo(
                t.id,
                t.name,
                t.role,
                t.prefix,
                t.created_at,
                t.last_used_at,
                t.revoked_at,
                t.expires_at,
                names.get(t.user_id) if t.user_id is not None else None,
            )
            for t in s.scalars(select(ApiToken).order_by(ApiToken.id))
        ]


def revoke_token(db: Database, ident: str) -> int:
    """Revoke by id or name; returns how many tokens were revoked."""
    with db.session() as s:
        q = select(ApiToken).where(ApiToken.revoked_at.is_(None))
        q = (
            q.where(ApiToken.id == int(ident))
            if ident.isdigit()
            else q.where(ApiToken.name == ident)
        )
        rows = list(s.scalars(q))
        for row in rows:
            row.revoked_at = utcnow()
    readcache.invalidate()
    return len(rows)


def token_principal(db: Database, token: str) -> Principal | None:
    """The caller of a live token; None for an unknown, revoked or expired token, or one
    whose user is disabled or gone. A user's token never has more than the user's role."""
    now = utcnow()
    with db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        role = Role(row.role)
        if row.user_id is not None:
            owner = s.get(User, row.user_id)
            if owner is None or owner.disabled_at is not None:
                return None
            if owner.role != Role.ADMIN.value:
                role = Role.VIEWER
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return Principal(f"token:{row.name}", role, "token")


# --- login throttling ---------------------------------------------------------------

USER_FAILURE_LIMIT = 5
ADDRESS_FAILURE_LIMIT = 20
THROTTLE_WINDOW_S = 15 * 60.0
FIRST_LOCK_S = 15.0
MAX_LOCK_S = 15 * 60.0


def _lock_seconds(over: int) -> float:
    """The wait after the ``over``-th failure beyond the limit: 15 s, doubling, 15 min at
    most."""
    doublings: int = min(max(over - 1, 0), 20)
    return min(MAX_LOCK_S, FIRST_LOCK_S * float(2**doublings))


def address_key(host: str | None) -> str:
    """The throttling key of a client address: IPv6 by its /64 (one host's block)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


@dataclass(frozen=True)
class Attempt:
    """A login attempt admitted by ``LoginThrottle.begin`` (counted as a failure until
    ``LoginThrottle.succeeded`` is called with it)."""

    user_key: str
    address_key: str
    at: float


class LoginThrottle:
    """Per-user and per-client-address backoff for password logins, in this process's
    memory (a restart forgets it; each server process counts on its own).

    Every attempt counts as a failure when it starts, so parallel attempts cannot slip
    past the limit; a success takes it back and resets the user's failures. After
    ``user_limit`` failures of one user name, or ``address_limit`` from one address,
    within ``window_s``, attempts are refused (``TooManyLogins``) until a wait that starts
    at 15 s and doubles with every further attempt, up to 15 min; a refused attempt is
    never checked, whatever the password (no oracle), and counts as a failure of the user
    name or address that was locked.
    """

    def __init__(
        self,
        *,
        user_limit: int = USER_FAILURE_LIMIT,
        address_limit: int = ADDRESS_FAILURE_LIMIT,
        window_s: float = THROTTLE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._limits = {"u": user_limit, "a": address_limit}
        self._window = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def _wait(self, key: str, now: float) -> float:
        times = self._recent(key, now)
        over = len(times) - self._limits[key[0]] + 1
        if over <= 0:
            return 0.0
        return max(0.0, times[-1] + _lock_seconds(over) - now)

    def _record(self, key: str, now: float) -> None:
        times = self._failures.setdefault(key, deque())
        times.append(now)
        # the wait stops growing long before this; memory stays bounded per key
        while len(times) > self._limits[key[0]] + 64:
            times.popleft()
        if len(self._failures) > self._max_keys:
            self._prune(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self._window]:
            del self._failures[key]
        if len(self._failures) > self._max_keys:
            by_age = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in by_age[: len(by_age) // 2]:
                del self._failures[key]

    def begin(self, username: str, address: str) -> Attempt:
        """Admit an attempt (counted as a failure) or raise ``TooManyLogins``."""
        keys = ("u:" + username[:200], "a:" + address)
        with self._lock:
            now = self._clock()
            locked = [key for key in keys if self._wait(key, now) > 0]
            # a refused attempt counts only where it was refused: an address that is
            # locked out cannot push the failures of every user name it tries
            for key in locked or keys:
                self._record(key, now)
            if locked:
                wait = max(self._wait(key, now) for key in locked)
                raise TooManyLogins(max(1, math.ceil(wait)))
            return Attempt(keys[0], keys[1], now)

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: forget the user's failures and this attempt."""
        with self._lock:
            self._failures.pop(attempt.user_key, None)
            times = self._failures.get(attempt.address_key)
            if times is not None:
                try:
                    times.remove(attempt.at)
                except ValueError:
                    pass
