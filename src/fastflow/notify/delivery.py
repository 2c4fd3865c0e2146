"""The delivery machinery shared by every notification: channels, the delivery record,
and one background worker per database.

Guarantees (guarantee 6 of DESIGN.md), for ``dispatch`` (cleanup passes) and ``runs``
(pipeline runs) alike:

- callers only write the "in progress" delivery rows (``start_rows``) before they return;
  the network traffic happens in ``submit``'s worker thread, so a down SMTP server or a
  hanging webhook cannot delay them;
- jobs of one database run one after another, in the order they were submitted;
- channels of one notification are sent in parallel, each within
  ``DeliveryOptions.budget_s``; every outcome is recorded and logged, never raised;
- nothing logged, recorded or sent contains a secret (``redact``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import utcnow
from fastflow.notify import messages, records
from fastflow.notify.incidents import Kind
from fastflow.notify.messages import Message
from fastflow.notify.retry import DeliveryOptions, Outcome
from fastflow.security import redact

log = logging.getLogger("fastflow.notify")


@dataclass(frozen=True)
class ChannelResult:
    """How a notification went on one channel (``error`` never holds a secret)."""

    channel: str
    ok: bool
    error: str | None
    at: datetime
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "ok": self.ok,
            "error": self.error,
            "at": self.at.isoformat(),
            "attempts": self.attempts,
        }


class Delivery:
    """Handle on a background delivery. ``kind`` is None when there was nothing to send."""

    def __init__(self, kind: Kind | None = None) -> None:
        self.kind = kind
        self.results: list[ChannelResult] = []
        self._done = threading.Event()

    @classmethod
    def nothing(cls, kind: Kind | None = None) -> Delivery:
        """A finished handle: nothing to send (or no channel enabled for ``kind``)."""
        d = cls(kind)
        d._done.set()
        return d

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when the delivery has finished."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, results: list[ChannelResult]) -> None:
        self.results = results
        self._done.set()


# --- a short-lived command's wait ---------------------------------------------------------

CLI_WAIT_S = 20.0  # what a short-lived command waits for its notifications, in all
_cli_lock = threading.Lock()
_cli_waited = 0.0


def cli_wait_left() -> float:
    """What this process may still spend waiting for notifications (``CLI_WAIT_S``
    minus every ``cli_wait`` so far)."""
    with _cli_lock:
        return max(0.0, CLI_WAIT_S - _cli_waited)


def cli_wait(delivery: Delivery) -> bool:
    """Wait for ``delivery`` as a short-lived command does: all its waits together — a
    run's message, those of interrupted runs, the drain at exit — take at most
    ``CLI_WAIT_S`` (time spent waiting; time between waits does not count). True when
    the delivery has finished."""
    global _cli_waited
    started = time.monotonic()
    try:
        return delivery.wait(cli_wait_left())
    finally:
        with _cli_lock:
            _cli_waited += time.monotonic() - started


# --- one worker per database: deliveries leave in order ---------------------------------


class _Worker:
    """Runs jobs one after another in a daemon thread that lives only while there is work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._drain, name="notify", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    self._idle.notify_all()
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception as e:  # a bug; the job's own handler should have caught it
                log.error("notification worker: %s", type(e).__name__)

    def wait_idle(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until every job submitted so far has run."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)


_workers: weakref.WeakKeyDictionary[Database, _Worker] = weakref.WeakKeyDictionary()
_workers_lock = threading.Lock()


def _worker_for(db: Database) -> _Worker:
    with _workers_lock:
        worker = _workers.get(db)
        if worker is None:
            worker = _workers[db] = _Worker()
        return worker


def drain(db: Database, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for every delivery queued for ``db`` in this process
    (each takes at most its budget): a short-lived command calls this before it exits, so
    that a message raised on the way (a disk incident at a run's start) is not lost with
    its daemon thread, its delivery rows left "in progress". True when none is left."""
    with _workers_lock:
        worker = _workers.get(db)
    return worker is None or worker.wait_idle(timeout)


# --- channels -----------------------------------------------------------------------------


def enabled_channels(ctx: Context) -> list[str]:
    s = ctx.settings
    return [name for name, on in (("email", s.email_enabled), ("teams", s.teams_enabled)) if on]


def _send(ctx: Context, channel: str, message: Message, options: DeliveryOptions) -> Outcome:
    settings = ctx.settings
    try:
        message = messages.cleaned(message)
        # the transports (smtplib, httpx) are imported only when a message goes out
        if channel == "email":
            from fastflow.notify import email

            m = message
            return email.deliver(settings, m.subject, m.text, m.html, m.at, options)
        from fastflow.notify import teams

        return teams.post(settings, message.card, options)
    except Exception as e:  # never raise out of a channel
        return Outcome(False, redact(f"{channel}: {type(e).__name__}: {e}", settings), 0)


def deliver(
    ctx: Context,
    message: Message,
    rows: dict[str, int | None],
    options: DeliveryOptions,
) -> list[ChannelResult]:
    """Send on every channel of ``rows`` in parallel; record (a row id; None: not
    recorded, the database cannot be written) and log each outcome. Each channel's
    outcome is recorded as soon as that channel is done, not when the slowest one is: a
    process that ends while one channel still waits leaves only that one "in progress"
    (to be sent again by a later pass), never a message that went out."""
    if not rows:
        return []
    outcomes: dict[str, Outcome] = {}
    recorded: dict[str, datetime] = {}

    def run(channel: str) -> None:
        outcome = outcomes[channel] = _send(ctx, channel, message, options)
        row_id = rows[channel]
        if row_id is None:
            return
        try:
            recorded[channel] = records.finish_delivery(ctx.db, row_id, outcome)
        except Exception as e:
            log.error("cannot record the %s delivery: %s", channel, type(e).__name__)
            recorded[channel] = utcnow()

    # daemon threads, not an executor: an exiting CLI must not wait for them at shutdown
    threads = [
        threading.Thread(target=run, args=(ch,), name=f"notify-{ch}", daemon=True) for ch in rows
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results: list[ChannelResult] = []
    for channel in rows:
        outcome = outcomes.get(channel) or Outcome(False, "the delivery thread failed", 0)
        at, row_id = recorded.get(channel) or utcnow(), rows[channel]
        if row_id is not None and channel not in recorded:  # its thread failed
            try:
                at = records.finish_delivery(ctx.db, row_id, outcome)
            except Exception as e:
                log.error("cannot record the %s delivery: %s", channel, type(e).__name__)
        kind = message.kind.value
        if outcome.ok:
            log.info("%s notification sent (%s): %s", channel, kind, message.subject)
        else:
            log.warning("%s notification failed (%s): %s", channel, kind, outcome.error)
        results.append(ChannelResult(channel, outcome.ok, outcome.error, at, outcome.attempts))
    try:
        if any(row_id is not None for row_id in rows.values()):
            records.prune(ctx.db)
    except Exception as e:
        log.error("cannot prune the notification deliveries: %s", type(e).__name__)
    return results


def start_rows(
    ctx: Context,
    channels: list[str],
    kind: Kind,
    subject: str,
    incident_id: int | None,
    pass_id: int | None = None,
) -> dict[str, int | None]:
    """One "in progress" delivery row per channel; returns their ids by channel."""
    return {
        ch: records.start_delivery(
            ctx.db, kind.value, ch, subject, incident_id=incident_id, pass_id=pass_id
        )
        for ch in channels
    }


def submit(
    ctx: Context,
    delivery: Delivery,
    rows: dict[str, int | None],
    compose: Callable[[], Message],
    options: DeliveryOptions,
) -> None:
    """In the database's worker: ``compose`` the message and deliver it on the channels of
    ``rows``; ``delivery`` finishes with the results. A message that cannot be composed is
    recorded as failed on every channel (never left "in progress")."""

    def job() -> None:
        results: list[ChannelResult] = []
        try:
            try:
                message = compose()
            except Exception as e:
                error = safe(ctx, f"cannot compose the message: {type(e).__name__}: {e}")
                results = _fail_all(ctx, rows, error)
            else:
                results = deliver(ctx, message, rows, options)
        except Exception as e:
            log.error("notification delivery failed: %s", safe(ctx, f"{type(e).__name__}: {e}"))
        finally:
            delivery._finish(results)

    _worker_for(ctx.db).submit(job)


def _fail_all(ctx: Context, rows: dict[str, int | None], error: str) -> list[ChannelResult]:
    log.error("notification not sent: %s", error)
    results: list[ChannelResult] = []
    for channel, row_id in rows.items():
        at = utcnow()
        if row_id is not None:
            at = records.finish_delivery(ctx.db, row_id, Outcome(False, error, 0))
        results.append(ChannelResult(channel, False, error, at))
    return results


def reminder_interval(ctx: Context) -> timedelta:
    """``NOTIFY_REMINDER_HOURS``: how old the last announcement of an incident must be for
    a reminder."""
    return timedelta(hours=ctx.settings.notify_reminder_hours)


def safe(ctx: Context, text: str) -> str:
    """``text`` without secrets (or a placeholder when even redaction fails)."""
    try:
        return redact(text, ctx.settings)
    except Exception:
        return "(details withheld)"
