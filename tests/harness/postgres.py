"""Per-test PostgreSQL databases on the local server (127.0.0.1:5432, trust auth).

Override the server with ``FASTFLOW_TEST_PG_HOST`` / ``FASTFLOW_TEST_PG_PORT`` /
``FASTFLOW_TEST_PG_USER``; without a user, ``postgres`` then ``root`` are tried.
"""

from __future__ import annotations

import functools
import os
import re
import secrets

import psycopg
from psycopg import sql

PG_HOST = os.environ.get("FASTFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FASTFLOW_TEST_PG_PORT", "5432"))
_CANDIDATE_USERS = (
    (os.environ["FASTFLOW_TEST_PG_USER"],)
    if os.environ.get("FASTFLOW_TEST_PG_USER")
    else ("postgres", "root")
)
DB_PREFIX = "fastflow_test_"
_NAME_RE = re.compile(r"^[a-z0-9_]+$")


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL server/role was found."""


def _connect(user: str, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname=dbname, autocommit=True, connect_timeout=3
    )


@functools.cache
def _admin_user() -> str:
    """Return the first role that can connect and create databases (cached per process)."""
    errors: list[str] = []
    for user in _CANDIDATE_USERS:
        try:
            with _connect(user) as conn:
                row = conn.execute(
                    "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
                ).fetchone()
                if row and row[0]:
                    return user
                errors.append(f"{user}: cannot create databases")
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    raise PostgresUnavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} unusable: " + "; ".join(errors))


def postgres_unavailable_reason() -> str | None:
    """None if PostgreSQL is usable, else a human-readable reason."""
    try:
        _admin_user()
    except PostgresUnavailable as exc:
        _admin_user.cache_clear()
        return str(exc)
    return None


def postgres_available() -> bool:
    """True when a database can be created on the local PostgreSQL server."""
    return postgres_unavailable_reason() is None


def database_url(name: str) -> str:
    """``postgresql://USER@HOST:PORT/NAME`` for ``name`` (plain scheme: map it to a driver)."""
    return f"postgresql://{_admin_user()}@{PG_HOST}:{PG_PORT}/{name}"


def create_database() -> str:
    """Create a fresh, empty ``fastflow_test_<random>`` database and return its URL."""
    name = DB_PREFIX + secrets.token_hex(6)
    with _connect(_admin_user()) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(name)


def drop_database(name_or_url: str) -> None:
    """Terminate all connections to a test database and drop it (accepts a name or URL)."""
    name = name_or_url.rsplit("/", 1)[-1].split("?", 1)[0]
    if not name.startswith(DB_PREFIX) or not _NAME_RE.match(name):
        raise ValueError(f"refusing to drop non-test database {name!r}")
    with _connect(_admin_user()) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))
