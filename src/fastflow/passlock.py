"""One cleanup pass at a time, across processes.

PostgreSQL: a session-level advisory lock held on a dedicated connection. SQLite: an
exclusive ``flock`` on a file next to the database. Both are released by the operating
system or the server when the holding process dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastflow.db import Database, is_postgres
from fastflow.errors import PassAlreadyRunning

PG_LOCK_KEY = 0x66666C77  # "fflw"


class PassLock:
    """Context manager; raises ``PassAlreadyRunning`` if another process holds it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None
        self._fd: int | None = None

    def _lock_file(self) -> Path:
        url = make_url(self._db.engine.url)
        database = url.database or ""
        if database and database != ":memory:":
            return Path(database).expanduser().resolve().with_suffix(".cleanup.lock")
        return self._db.settings.data_dir.resolve() / "cleanup.lock"

    def acquire(self) -> None:
        if is_postgres(self._db.engine):
            conn = self._db.engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            if not got.scalar():
                conn.close()
                raise PassAlreadyRunning("another cleanup pass is running")
            conn.commit()
            self._conn = conn
            return
        path = self._lock_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PassAlreadyRunning("another cleanup pass is running") from None
        self._fd = fd

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PassLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
