"""Cron-driven cleanup passes in a background thread (never on the event loop).

The schedule is read in the server's local time. A pass that finds another one running
(another process holds the lock) is skipped and logged; the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from croniter import croniter

from fastflow.context import Context
from fastflow.errors import PassAlreadyRunning

if TYPE_CHECKING:
    from fastflow.lifecycle.cleanup import PassSummary

log = logging.getLogger("fastflow.scheduler")


def next_fire(expr: str, after: datetime) -> datetime:
    """Next time ``expr`` fires strictly after ``after`` (an aware local datetime)."""
    fire = croniter(expr, after).get_next(datetime)
    assert isinstance(fire, datetime)
    return fire


class CleanupScheduler:
    def __init__(
        self,
        ctx: Context,
        on_pass: Callable[[PassSummary], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        self._ctx = ctx
        self._on_pass = on_pass
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cleanup-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from fastflow.lifecycle.child import run_pass_in_child

        while not self._stop.is_set():
            expr = self._ctx.settings.cleanup_schedule  # may change at runtime (settings page)
            now = self._clock()
            fire = next_fire(expr, now)
            log.info("next cleanup pass at %s", fire.isoformat(timespec="seconds"))
            if self._stop.wait(max(0.0, (fire - now).total_seconds())):
                return
            try:
                summary = run_pass_in_child(self._ctx, "schedule")
                log.info(
                    "scheduled cleanup: %s archived, %s deleted, %s failures",
                    summary.archived_runs,
                    summary.deleted_runs,
                    summary.backup_failures,
                )
                if self._on_pass is not None:
                    self._on_pass(summary)
            except PassAlreadyRunning:
                log.warning("scheduled cleanup skipped: another pass is running")
            except Exception:
                log.exception("scheduled cleanup pass failed")
