"""Engine and session factory built from Settings; migrations run at start-up."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from fastflow.config import Settings, mask_url_password
from fastflow.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def head_revision() -> str:
    """The newest migration, read from the file names (revisions are numbered ``NNNN_``).

    Cheap on purpose: when the database is already there, start-up skips importing
    Alembic (a tenth of a second); a test keeps this equal to Alembic's own head.
    """
    return _revisions()[-1]


def _revisions() -> list[str]:
    """Every migration's revision, oldest first (from the file names ``NNNN_*.py``)."""
    return sorted(
        p.name[:4] for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )


_MIGRATION_LOCK_KEY = 0x66617374  # "fast": serialises concurrent start-ups on PostgreSQL
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` to the psycopg 3 driver; leave other URLs as they are."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


SQLITE_POOL_SIZE = 40  # connections kept open (a SQLite connection is a file handle)
PG_POOL_SIZE = 10  # kept open per process; up to 30 more while the server is busy


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite database file; None for other databases and for
    ``:memory:``."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def make_engine(settings: Settings) -> Engine:
    """Create the engine; for SQLite, create the parent folder and enable WAL. A URL the
    driver cannot use is a ``ConfigError`` naming it (password masked), not a traceback."""
    try:
        return _make_engine(settings)
    except (ValueError, TypeError, ArgumentError) as e:
        raw = settings.database_url
        masked = mask_url_password(raw)
        raise ConfigError(
            f"invalid DATABASE_URL={masked}: " + str(e).replace(raw, masked).splitlines()[0]
        ) from None


def _make_engine(settings: Settings) -> Engine:
    url = make_url(normalise_url(settings.database_url))
    kwargs: dict[str, Any] = {}
    busy_ms = SQLITE_BUSY_TIMEOUT_MS
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            try:
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(
                    f"cannot create the database folder for DATABASE_URL: {e.strerror}"
                ) from e
        # ?timeout=SECONDS in the URL sets how long a writer waits for a locked database
        raw = url.query.get("timeout")
        if isinstance(raw, str):
            try:
                busy_ms = int(float(raw) * 1000)
            except ValueError:
                raise ConfigError(f"invalid DATABASE_URL: timeout={raw!r} is not seconds") from None
        url = url.difference_update_query(["timeout"])
        kwargs["connect_args"] = {"timeout": busy_ms / 1000}
        # the server answers from up to 40 worker threads: connections beyond the pool
        # would be opened (with their pragmas) and closed again for every request
        kwargs.update(pool_size=SQLITE_POOL_SIZE, max_overflow=10)
    else:
        from fastflow.db.models import add_postgresql_options

        add_postgresql_options()  # the dialect is loaded now anyway (see there)
        kwargs.update(pool_pre_ping=True, pool_size=PG_POOL_SIZE, max_overflow=30)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", lambda conn, _rec: _sqlite_pragmas(conn, busy_ms))
    return engine


def _sqlite_pragmas(dbapi_conn: Any, busy_ms: int) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    _enable_wal(cur, busy_ms)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _enable_wal(cur: Any, busy_ms: int) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock:
    SQLite answers "database is locked" at once, without its busy handler, when
    connections of a new database switch it to WAL together (processes starting at the
    same moment). Gives up after ``busy_ms``, like any other locked statement."""
    deadline = time.monotonic() + busy_ms / 1000
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; None before the first migration. One query when
    the table is there (every start-up); the table is looked up only when it fails."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            conn.rollback()  # PostgreSQL: the failed statement aborted the transaction
            if inspect(conn).has_table("alembic_version"):
                raise
            return None


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration (idempotent). Safe when processes start together:
    on PostgreSQL they queue on an advisory lock in the migrating transaction, on SQLite
    on an exclusive ``flock`` of ``<database>.migrate.lock`` (SQLite's driver commits
    each ``CREATE TABLE`` on its own, so its transaction cannot serialise them); whoever
    comes second finds the database at head. Alembic's INFO lines are silenced; its
    warnings still show."""
    current = current_revision(engine)
    if current == head_revision():
        return
    _refuse_unknown(current)
    with _sqlite_migration_lock(engine):
        if current_revision(engine) == head_revision():
            return  # another process migrated while this one waited
        _upgrade(engine)


def _refuse_unknown(revision: str | None) -> None:
    """A clear error for a schema this build has no migration for (a newer fastflow
    upgraded the database, and this older one was started on it): Alembic's own error
    is a long traceback, and no migration may run on that schema."""
    known = _revisions()
    if revision is None or revision in known:
        return
    newer = revision.isdigit() and revision > known[-1]
    raise ConfigError(
        f"the database is at schema revision {revision!r}, which this fastflow does not "
        f"know (its newest is {known[-1]!r})"
        + (
            ": a newer fastflow upgraded it; run that version (the schema is never downgraded)"
            if newer
            else ""
        )
    )


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """An exclusive ``flock`` on the file next to a SQLite database (released when the
    process ends, so a crash leaves no stale lock); nothing for other databases."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = Path(database).expanduser().resolve().with_suffix(".migrate.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(
            f"cannot create the migration lock {path.name} next to the database: {e.strerror}"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def _upgrade(engine: Engine) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # before import: it logs then
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine.dialect.name == "sqlite":
        with _sqlite_transaction(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _sqlite_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection whose every statement, DDL included, is in one SQLite transaction,
    committed at the end of the block, rolled back on an error — and by SQLite itself
    when the process dies inside it. Python's driver commits each ``CREATE``/``ALTER``
    (and the table copies of a batch migration) on its own otherwise: a migration
    stopped half-way (killed, disk full) left a schema no migration could continue
    from, or a table dropped before its copy was renamed."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.isolation_level = None  # the driver opens no transaction of its own now
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            raw.isolation_level = ""  # the driver's default again (nothing is open)


def begin_write(s: Session) -> None:
    """On SQLite, take the database's write lock now (``BEGIN IMMEDIATE``), as the first
    statement of ``s``: the driver otherwise begins a transaction only at the first write,
    so what ``s`` read before it may have changed by then. Nothing elsewhere (PostgreSQL
    locks rows or takes an advisory lock where it matters)."""
    if s.get_bind().dialect.name == "sqlite":
        s.execute(text("BEGIN IMMEDIATE"))


class Database:
    """The engine plus a session factory; ``session()`` commits or rolls back.
    ``new_file`` is the SQLite file that did not exist yet when the engine was made
    (the first connection creates it), else None."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        path = sqlite_file(settings.database_url)
        self.new_file = path if path is not None and not path.exists() else None
        self.engine = make_engine(settings)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
