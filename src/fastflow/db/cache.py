"""A one-second cache for the read endpoints that every open browser polls.

Many clients polling the same list would otherwise repeat the same queries. Entries live
at most ``TTL_S`` and are dropped at once when this process changes what they show
(a run starts or ends, a pass finishes, a failure is recorded, settings change); a change
made by another process shows up within ``TTL_S``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

TTL_S = 1.0
MAX_ENTRIES = 256

_lock = threading.Lock()
_generation = 0
_entries: dict[Hashable, tuple[float, int, Any]] = {}
_inflight: dict[Hashable, threading.Event] = {}  # keys being computed: the others wait
INFLIGHT_WAIT_S = 30.0  # a computation that takes longer is repeated by a waiter


def invalidate() -> None:
    """Forget every entry (called wherever this process changes runs or failures)."""
    global _generation
    with _lock:
        _generation += 1
        _entries.clear()


MISS = object()  # ``peek``'s answer when there is no live entry


def peek(key: Hashable) -> Any:
    """The live entry for ``key``, or ``MISS`` (never computes: for the event loop,
    which must not wait for the database)."""
    now = time.monotonic()
    with _lock:
        hit = _entries.get(key)
        if hit is not None and hit[0] > now and hit[1] == _generation:
            return hit[2]
    return MISS


def cached(key: Hashable, compute: Callable[[], Any], ttl: float = TTL_S) -> Any:
    """The entry for ``key``, computed when missing or expired. One caller computes it;
    callers arriving meanwhile wait for that result instead of repeating the queries
    (50 clients polling the same list would otherwise all query when it expires)."""
    while True:
        now = time.monotonic()
        with _lock:
            hit = _entries.get(key)
            generation = _generation
            if hit is not None and hit[0] > now and hit[1] == generation:
                return hit[2]
            running = _inflight.get(key)
            if running is None:
                _inflight[key] = running = threading.Event()
                break
        running.wait(INFLIGHT_WAIT_S)  # then look again (computed, or compute it here)
    try:
        value = compute()
        with _lock:
            if generation == _generation:  # not invalidated while computing
                if len(_entries) >= MAX_ENTRIES:
                    _entries.clear()
                _entries[key] = (now + ttl, generation, value)
    finally:
        with _lock:
            _inflight.pop(key, None)
        running.set()
    return value
