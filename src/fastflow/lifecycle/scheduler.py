"""Cron-driven cleanup passes (and, beside them, archive verifications) in background
threads (never on the event loop).

The schedule is read in the server's local time. A pass that finds another one running
(another process holds the lock) is skipped and logged; the next tick tries again.

A changed ``CLEANUP_SCHEDULE`` takes effect at once: ``settings_changed(ctx)`` (called
after the settings were saved) computes the next time from the new expression, logs it
and wakes the waiting thread; without that call the thread still notices a change of
``ctx.settings`` within ``RECHECK_S``. ``next_pass_at(ctx)`` is the time the scheduler
of ``ctx`` waits for (None when no scheduler runs in this process).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from croniter import croniter

from fastflow.context import Context
from fastflow.errors import PassAlreadyRunning

if TYPE_CHECKING:
    from fastflow.lifecycle.cleanup import PassSummary

log = logging.getLogger("fastflow.scheduler")

RECHECK_S = 30.0  # how often a waiting scheduler re-reads the schedule by itself
_running: weakref.WeakSet[CronThread] = weakref.WeakSet()
_running_lock = threading.Lock()


def next_fire(expr: str, after: datetime) -> datetime:
    """Next time ``expr`` fires strictly after ``after`` (an aware local datetime)."""
    fire = croniter(expr, after).get_next(datetime)
    assert isinstance(fire, datetime)
    return fire


def _schedulers(ctx: Context) -> list[CronThread]:
    with _running_lock:
        return [s for s in _running if s.ctx is ctx]


def settings_changed(ctx: Context) -> None:
    """The settings of ``ctx`` changed: every scheduler of it plans its next run from the
    current schedule (``CLEANUP_SCHEDULE``, ``ARCHIVE_VERIFY_SCHEDULE``) now (and logs the
    new time)."""
    for scheduler in _schedulers(ctx):
        scheduler.reschedule()


def next_pass_at(ctx: Context) -> datetime | None:
    """When the scheduler of ``ctx`` runs its next pass; None when none runs here."""
    times = [t for s in _schedulers(ctx) if isinstance(s, CleanupScheduler) and (t := s.next_at)]
    return min(times) if times else None


class CronThread:
    """A daemon thread that runs ``_job`` whenever the cron expression ``_expression()`` fires
    (server local time, or the injected ``clock``); a changed expression applies at once
    after ``reschedule`` and within ``RECHECK_S`` without it."""

    what = "job"
    thread_name = "scheduler"

    def __init__(
        self, ctx: Context, clock: Callable[[], datetime] = lambda: datetime.now().astimezone()
    ) -> None:
        self.ctx = ctx
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._expr: str | None = None
        self._next: datetime | None = None
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    def _expression(self) -> str:
        raise NotImplementedError

    def _job(self) -> None:
        raise NotImplementedError

    @property
    def next_at(self) -> datetime | None:
        """The time of the next run (None before the thread planned one)."""
        with self._lock:
            return self._next

    def start(self) -> None:
        self._plan()
        with _running_lock:
            _running.add(self)
        self._thread.start()

    def stop(self) -> None:
        with _running_lock:
            _running.discard(self)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def reschedule(self) -> None:
        """Plan the next run from the current schedule now and wake the thread."""
        self._plan()
        self._wake.set()

    def _plan(self) -> datetime:
        with self._lock:
            expr = self._expression()  # may change at runtime (settings page)
            fire = next_fire(expr, self._clock())
            changed = (expr, fire) != (self._expr, self._next)
            self._expr, self._next = expr, fire
        if changed:
            log.info("next %s at %s (%s)", self.what, fire.isoformat(timespec="seconds"), expr)
        return fire

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                fire, expr = self._next, self._expr
                self._wake.clear()  # a reschedule after this point wakes the wait below
            assert fire is not None
            delay = max(0.0, (fire - self._clock()).total_seconds())
            if self._wake.wait(min(delay, RECHECK_S)):
                continue  # stopped, or rescheduled: wait for the new time
            if delay > RECHECK_S:
                if self._expression() != expr:
                    self._plan()
                continue
            self._job()
            self._plan()


class CleanupScheduler(CronThread):
    """Cleanup passes on ``CLEANUP_SCHEDULE``; with ``verify`` (the default) it also
    starts and stops the archive verification on ``ARCHIVE_VERIFY_SCHEDULE``
    (``verify_schedule.VerifyScheduler``), so that ``fastflow serve`` runs both."""

    what = "cleanup pass"
    thread_name = "cleanup-scheduler"

    def __init__(
        self,
        ctx: Context,
        on_pass: Callable[[PassSummary], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        *,
        verify: bool = True,
    ) -> None:
        super().__init__(ctx, clock)
        self._on_pass = on_pass
        self._verifier: CronThread | None = None
        if verify:
            from fastflow.lifecycle.verify_schedule import VerifyScheduler

            self._verifier = VerifyScheduler(ctx)

    def start(self) -> None:
        super().start()
        if self._verifier is not None:
            self._verifier.start()

    def stop(self) -> None:
        if self._verifier is not None:
            self._verifier.stop()
        super().stop()

    def _expression(self) -> str:
        return self.ctx.settings.cleanup_schedule

    def _job(self) -> None:
        self._run_pass()

    def _run_pass(self) -> None:
        from fastflow.lifecycle.child import run_pass_in_child

        try:
            summary = run_pass_in_child(self.ctx, "schedule")
            log.info(
                "scheduled cleanup: %s archived, %s deleted, %s failures%s",
                summary.archived_runs,
                summary.deleted_runs,
                summary.backup_failures,
                f"; {summary.error}" if summary.error else "",
            )
            if self._on_pass is not None:
                self._on_pass(summary)
        except PassAlreadyRunning:
            log.warning("scheduled cleanup skipped: another pass is running")
        except Exception:
            log.exception("scheduled cleanup pass failed")
