"""Which fastflow processes are alive, across machines sharing one PostgreSQL database.

Each process that executes runs (``fastflow serve``, ``fastflow run``) holds a
session-level advisory lock keyed by its identity (host, pid, start time) for as long as
it lives; PostgreSQL releases it when the process or its connection dies. Another
server can then tell a dead runner from a live one on another machine: if it can take
that lock, the owner is gone. On SQLite (one machine) the process table answers instead
(``store.recover_orphans``), so this module does nothing there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

from sqlalchemy import text

from fastflow.db.engine import Database, is_postgres
from fastflow.runs import store

_held: dict[int, Any] = {}
_mutex = threading.Lock()


def key_of(host: str, pid: int, started: float | None) -> int:
    """A signed 64-bit advisory-lock key for one process."""
    ident = f"fastflow-runner:{host}:{pid}:{round(started or 0.0, 1)}".encode()
    return int.from_bytes(hashlib.sha256(ident).digest()[:8], "big", signed=True)


CHECK_S = 5.0  # how often ``hold`` makes sure the lock's connection still lives
_checked: dict[int, float] = {}


def hold(db: Database) -> None:
    """Hold this process's liveness lock (idempotent; PostgreSQL only). Called again, it
    takes the lock anew when the connection that held it has died (a database restart,
    ``pg_terminate_backend``): without it, another server takes this live process for
    dead and follows up its runs."""
    if not is_postgres(db.engine):
        return
    pid = os.getpid()
    key = key_of(store.HOSTNAME, pid, store.process_started(pid))
    with _mutex:
        if key in _held:
            if time.monotonic() - _checked.get(key, 0.0) < CHECK_S:
                return
            _checked[key] = time.monotonic()
            try:
                _held[key].execute(text("SELECT 1")).scalar()
                _held[key].commit()  # (never left idle in a transaction)
                return
            except Exception:  # the connection (and with it the lock) is gone
                try:
                    _held.pop(key).close()
                except Exception:
                    pass
        conn = db.engine.connect()
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        _held[key] = conn


def is_alive(db: Database, host: str | None, pid: int | None, started: float | None) -> bool:
    """False only when the process provably died (its lock can be taken)."""
    if not is_postgres(db.engine) or host is None or pid is None:
        return True
    key = key_of(host, pid, started)
    if key in _held:
        return True
    with db.engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if got:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    return not got
