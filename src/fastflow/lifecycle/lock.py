"""One cleanup pass at a time, across processes.

PostgreSQL: a session-level advisory lock held on a dedicated connection. SQLite: an
exclusive ``flock`` on a file next to the database. Both are released by the operating
system or the server when the holding process dies, so a crash never leaves a stale lock.

A PostgreSQL lock is lost when its connection ends (``pg_terminate_backend``, a server
restart, a network cut): ``check()`` asks the server on that connection whether this
session still holds the lock and raises ``PassLockLost`` otherwise. The pass calls it
before every destructive step.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastflow.db.engine import Database, is_postgres
from fastflow.errors import PassAlreadyRunning, PassLockLost

PG_LOCK_KEY = 0x66666C77  # "fflw"
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND classid = 0 AND objid = :k AND objsubid = 1"
)


class PassLock:
    """Context manager; raises ``PassAlreadyRunning`` if another process holds it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None
        self._fd: int | None = None
        self._check_lock = threading.Lock()
        self._lost: str | None = None

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

    def check(self) -> None:
        """Raise ``PassLockLost`` unless this process still holds the lock (thread-safe)."""
        with self._check_lock:
            if self._lost is None and self._conn is not None:
                try:
                    held = self._conn.execute(_HELD, {"k": PG_LOCK_KEY}).scalar()
                    self._conn.commit()
                except Exception as e:  # the connection is gone, and the lock with it
                    held = 0
                    self._lost = f"its database connection ended ({type(e).__name__})"
                if not held and self._lost is None:
                    self._lost = "the database no longer shows it as the holder"
            if self._lost is not None:
                raise PassLockLost(
                    f"the cleanup pass lost its lock: {self._lost}; stopped before the next "
                    "destructive step (another pass may be running)"
                )

    def release(self) -> None:
        if self._conn is not None:
            try:
                if self._lost is None:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                    self._conn.commit()
            except Exception:
                pass  # a dead connection holds no lock
            finally:
                try:
                    self._conn.close()
                except Exception:
                    pass
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
