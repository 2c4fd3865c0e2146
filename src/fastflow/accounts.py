"""Users, API tokens and browser sessions."""

from __future__ import annotations

import enum
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from fastflow import security
from fastflow.db import cache as readcache
from fastflow.db.engine import Database
from fastflow.db.models import ApiToken, User, WebSession, utcnow
from fastflow.errors import AuthError as AuthError
from fastflow.errors import Forbidden as Forbidden
from fastflow.errors import InvalidInput as InvalidInput

SESSION_LIFETIME = timedelta(hours=12)
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")
MIN_PASSWORD = 8


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


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise InvalidInput(f"role must be 'admin' or 'viewer', not {raw!r}") from None


def count_users(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)


def create_user(db: Database, username: str, password: str, role: str) -> User:
    if not _USERNAME.match(username):
        raise InvalidInput("username: 1-100 characters of letters, digits, '.', '_', '@', '-'")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password must have at least {MIN_PASSWORD} characters")
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


def login(db: Database, username: str, password: str) -> tuple[str, WebSession]:
    """Check the password; return a new session token (for the cookie) and its row."""
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == username))
        # an unknown user costs the same hash check, so timing does not reveal user names
        stored = user.password_hash if user is not None else _dummy_hash()
        if not security.verify_password(stored, password) or user is None:
            raise AuthError("wrong username or password")
        token = secrets.token_urlsafe(32)
        row = WebSession(
            id_hash=security.token_hash(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=utcnow() + SESSION_LIFETIME,
        )
        s.add(row)
    return token, row


def logout(db: Database, token: str) -> None:
    with db.session() as s:
        row = s.get(WebSession, security.token_hash(token))
        if row is not None:
            s.delete(row)
    readcache.invalidate()


def session_principal(db: Database, token: str, now: datetime | None = None) -> Principal | None:
    now = now or utcnow()
    with db.session() as s:
        row = s.get(WebSession, security.token_hash(token))
        if row is None or row.expires_at <= now:
            return None
        user = s.get(User, row.user_id)
        if user is None:
            return None
        return Principal(user.username, Role(user.role), "session", row.csrf_token)


def create_token(db: Database, name: str, role: str) -> str:
    """Create an API token; the clear text is returned once and never stored."""
    if not name.strip() or len(name) > 100:
        raise InvalidInput("token name must be 1-100 characters")
    token = security.new_token()
    with db.session() as s:
        s.add(
            ApiToken(
                name=name.strip(),
                token_hash=security.token_hash(token),
                prefix=token[:10],
                role=parse_role(role).value,
            )
        )
    return token


def list_tokens(db: Database) -> list[ApiToken]:
    with db.session() as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))


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
    with db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return Principal(f"token:{row.name}", Role(row.role), "token")
