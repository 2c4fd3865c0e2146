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


def hold(db: Database) -> None:
    """Hold this process's liveness lock (idempotent; PostgreSQL only)."""
    if not is_postgres(db.engine):
        return
    pid = os.getpid()
    key = key_of(store.HOSTNAME, pid, store.process_started(pid))
    with _mutex:
        if key in _held:
            return
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
