"""Attempts, pauses and the time budget that every channel shares.

A delivery on one channel never takes longer than ``budget_s`` (plus a moment): each
attempt's timeout is cut to what is left of the budget, no attempt starts once the budget
is spent, and at its end ``Deadline`` shuts the attempt's connection down — also when
the server drips its answer a byte at a time. That is what lets ``fastflow cleanup`` wait for
delivery a bounded time and still record how it ended.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_S = (1.0, 3.0)
DEFAULT_MAX_RETRY_AFTER_S = 10.0
DEFAULT_BUDGET_S = 18.0  # below the ~20 s that ``fastflow cleanup`` waits for delivery
_MIN_ATTEMPT_S = 0.05
log = logging.getLogger("fastflow.notify")
BUDGET_SPENT = "no answer within the delivery time budget"  # an attempt its deadline ended


@dataclass(frozen=True)
class DeliveryOptions:
    """How hard to try. The defaults are the production values; tests shorten them.

    ``backoff_s[i]`` is the pause before attempt ``i + 2`` (the last value repeats);
    ``ssl_context`` overrides ``ssl.create_default_context()`` for SMTP TLS.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    budget_s: float = DEFAULT_BUDGET_S
    ssl_context: ssl.SSLContext | None = None

    def pause_before(self, attempt: int) -> float:
        """Pause before attempt number ``attempt`` (2, 3, ...)."""
        if not self.backoff_s:
            return 0.0
        return self.backoff_s[min(attempt - 2, len(self.backoff_s) - 1)]


@dataclass(frozen=True)
class Outcome:
    """How one channel's delivery ended; ``error`` is already free of secrets."""

    ok: bool
    error: str | None
    attempts: int


class Budget:
    """The deadline of one delivery on one channel."""

    def __init__(self, options: DeliveryOptions) -> None:
        self.options = options
        self._deadline = time.monotonic() + options.budget_s

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def timeout(self) -> float:
        """Timeout for the next network operation (never above ``timeout_s``)."""
        return max(_MIN_ATTEMPT_S, min(self.options.timeout_s, self.remaining()))

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` if the budget still allows an attempt afterwards."""
        if seconds + _MIN_ATTEMPT_S >= self.remaining():
            return False
        if seconds > 0:
            threading.Event().wait(seconds)
        return True


class Deadline:
    """Ends an attempt's connections when the budget runs out: their sockets are shut
    down (both ways), which wakes a read blocked on them at once. A server that answers
    one byte at a time — each within the read timeout — thus cannot hold a delivery past
    its budget. Sockets are watched through a duplicate of their descriptor, so a
    socket later wrapped in TLS is still reached; ``close`` releases the duplicates."""

    def __init__(self, budget: Budget) -> None:
        self.expired = False
        self._budget = budget
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(max(0.0, budget.remaining()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(_MIN_ATTEMPT_S, self._budget.remaining())

    def spent(self) -> bool:
        """True once the budget is (about) over: the connection was shut, or a socket
        timeout set to end with the budget fired a moment before the shutdown."""
        return self.expired or self._budget.remaining() <= _MIN_ATTEMPT_S

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock``'s connection down at the deadline (at once when it is past, or
        when it cannot be watched: no descriptor left to duplicate it — the attempt then
        fails as a broken connection instead of running without a deadline)."""
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
        except OSError as e:
            log.warning("a notification's connection cannot be watched, closed: %s", e)
            _shut(sock)
            return
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _shut(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def addresses(host: str, port: int, deadline: Deadline) -> list[str]:
    """The IP addresses of ``host`` to connect to, in the resolver's order; the lookup
    runs in a daemon thread and is given up at the deadline (``TimeoutError``): the
    resolver's own timeouts, tried per name server, can outlast a delivery's budget.
    An IP address is returned as it is; ``socket.gaierror`` when the name is unknown."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    found: list[list[str] | OSError] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except OSError as e:
            found.append(e)
        finally:
            done.set()

    threading.Thread(target=resolve, name="resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise TimeoutError(f"no address for {host} within the delivery time budget")
    result = found[0]
    if isinstance(result, OSError):
        raise result
    return result


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
