"""Attempts, pauses and the time budget that every channel shares.

A delivery on one channel never takes longer than ``budget_s`` (plus at most one socket
timeout's rounding): each attempt's timeout is cut to what is left of the budget, and no
attempt starts once the budget is spent. That is what lets ``fastflow cleanup`` wait for
delivery a bounded time and still record how it ended.
"""

from __future__ import annotations

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
