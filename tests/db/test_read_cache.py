"""The one-second read cache: one computation per expiry however many callers wait, and
the event loop's ``peek`` never computes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fastflow.db import cache as readcache


def test_callers_arriving_during_a_computation_wait_for_it() -> None:
    readcache.invalidate()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        started.set()
        release.wait(10)  # held until every caller has arrived
        return "the list"

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(readcache.cached, ("runs", 1), compute)
        assert started.wait(10)
        others = [pool.submit(readcache.cached, ("runs", 1), compute) for _ in range(7)]
        release.set()
        results = [first.result(10), *(f.result(10) for f in others)]

    assert results == ["the list"] * 8
    assert calls == [1]  # not eight queries when the entry expires under load


def test_a_failed_computation_lets_the_next_caller_compute() -> None:
    readcache.invalidate()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database busy")
        return "ok"

    try:
        readcache.cached(("k",), flaky)
    except RuntimeError:
        pass
    assert readcache.cached(("k",), flaky) == "ok" and len(attempts) == 2


def test_peek_returns_live_entries_and_never_computes() -> None:
    readcache.invalidate()
    assert readcache.peek(("p",)) is readcache.MISS
    readcache.cached(("p",), lambda: 42)
    assert readcache.peek(("p",)) == 42
    readcache.invalidate()
    assert readcache.peek(("p",)) is readcache.MISS
