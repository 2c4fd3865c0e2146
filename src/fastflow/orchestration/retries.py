"""Whether and when a failed attempt is retried: pure functions of a ``RetrySpec``.

Attempts are numbered from 1; ``spec.max`` retries mean attempts 1..max+1 may exist.
"""

from __future__ import annotations

import math

from fastflow.db.models import RunStatus
from fastflow.runs.specs import RetrySpec

RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.TIMEOUT})


def retry_delay(spec: RetrySpec, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` once attempt ``attempt`` (>= 1)
    failed: ``delay_seconds`` (fixed), ``delay_seconds × multiplier^(attempt−1)``
    (exponential; an overflow counts as infinite) or ``delays[attempt−1]``
    (custom_schedule, the last value repeating, ``delay_seconds`` when empty). Always
    capped by ``max_delay_seconds`` when set; never negative."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if spec.backoff == "exponential":
        delay = _exponential(spec.delay_seconds, spec.multiplier, attempt - 1)
    elif spec.backoff == "custom_schedule" and spec.delays:
        delay = spec.delays[min(attempt, len(spec.delays)) - 1]
    else:
        delay = spec.delay_seconds
    if spec.max_delay_seconds is not None:
        delay = min(delay, spec.max_delay_seconds)
    return max(0.0, float(delay))


def _exponential(base: float, multiplier: float, exponent: int) -> float:
    try:
        return base * multiplier**exponent
    except OverflowError:
        return math.copysign(math.inf, base) if base else 0.0


def should_retry(spec: RetrySpec, attempt: int, status: RunStatus | str) -> bool:
    """True when attempt ``attempt`` ended FAILED or TIMEOUT and another is allowed
    (``1 <= attempt <= spec.max``); never for SUCCESS, CANCELLED or a non-final status."""
    return status in RETRYABLE and 1 <= attempt <= spec.max
