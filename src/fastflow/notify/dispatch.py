"""After a pass: decide, record, and deliver in the background — never raising, never blocking.

Guarantees (guarantee 6 of DESIGN.md; pinned by ``tests/notify/test_notify_pass.py``):

- ``after_pass`` only reads and writes the database (the incident state and one
  "in progress" delivery row per channel) before it returns; all network traffic happens
  in a background thread, so a down SMTP server or a hanging webhook cannot delay the
  caller, and deletion decisions were taken before it is even called;
- no exception escapes ``after_pass``, ``send_test`` or ``last_results``: failures are
  logged and recorded as a delivery with ``ok = False``;
- one delivery per channel takes at most ``DeliveryOptions.budget_s`` (18 s by default),
  so ``fastflow cleanup`` can wait ``CLI_WAIT_S`` and still see the outcome recorded;
- deliveries of one database leave in the order of their passes (one worker per database);
- nothing logged, recorded or sent contains a secret (``redact``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import utcnow
from fastflow.notify import email, messages, records, teams
from fastflow.notify.incidents import PASS_KEY, Kind
from fastflow.notify.messages import FailedRun, Notice
from fastflow.notify.retry import DeliveryOptions, Outcome
from fastflow.security import redact

if TYPE_CHECKING:
    from fastflow.lifecycle.cleanup import PassSummary

log = logging.getLogger("fastflow.notify")

CLI_WAIT_S = 20.0  # how long ``fastflow cleanup`` waits for delivery before exiting
_LABELS = {"email": ("e-mail", "EMAIL_ENABLED"), "teams": ("Teams", "TEAMS_ENABLED")}


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


# --- one worker per database: deliveries leave in order ---------------------------------


class _Worker:
    """Runs jobs one after another in a daemon thread that lives only while there is work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception as e:  # a bug; the job's own handler should have caught it
                log.error("notification worker: %s", type(e).__name__)


_workers: weakref.WeakKeyDictionary[Database, _Worker] = weakref.WeakKeyDictionary()
_workers_lock = threading.Lock()


def _worker_for(db: Database) -> _Worker:
    with _workers_lock:
        worker = _workers.get(db)
        if worker is None:
            worker = _workers[db] = _Worker()
        return worker


# --- channels -----------------------------------------------------------------------------


def enabled_channels(ctx: Context) -> list[str]:
    s = ctx.settings
    return [name for name, on in (("email", s.email_enabled), ("teams", s.teams_enabled)) if on]


def _send(ctx: Context, channel: str, notice: Notice, options: DeliveryOptions) -> Outcome:
    settings = ctx.settings
    try:
        if channel == "email":
            return email.deliver(
                settings,
                messages.subject(notice),
                messages.email_text(notice),
                messages.email_html(notice),
                notice.at,
                options,
            )
        return teams.post(settings, messages.teams_card(notice), options)
    except Exception as e:  # never raise out of a channel
        return Outcome(False, redact(f"{channel}: {type(e).__name__}: {e}", settings), 0)


def _deliver(
    ctx: Context,
    notice: Notice,
    rows: dict[str, int],
    options: DeliveryOptions,
) -> list[ChannelResult]:
    """Send on every channel of ``rows`` in parallel; record and log each outcome."""
    if not rows:
        return []
    outcomes: dict[str, Outcome] = {}

    def run(channel: str) -> None:
        outcomes[channel] = _send(ctx, channel, notice, options)

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
        at = utcnow()
        try:
            at = records.finish_delivery(ctx.db, rows[channel], outcome)
        except Exception as e:
            log.error("cannot record the %s delivery: %s", channel, type(e).__name__)
        if outcome.ok:
            log.info(
                "%s notification sent (%s): %s",
                channel,
                notice.kind.value,
                messages.subject(notice),
            )
        else:
            log.warning(
                "%s notification failed (%s): %s", channel, notice.kind.value, outcome.error
            )
        results.append(ChannelResult(channel, outcome.ok, outcome.error, at, outcome.attempts))
    try:
        records.prune(ctx.db)
    except Exception as e:
        log.error("cannot prune the notification deliveries: %s", type(e).__name__)
    return results


def _start_rows(
    ctx: Context,
    channels: list[str],
    notice: Notice,
    incident_id: int | None,
    pass_id: int | None,
) -> dict[str, int]:
    subject = messages.subject(notice)
    return {
        ch: records.start_delivery(
            ctx.db, notice.kind.value, ch, subject, incident_id=incident_id, pass_id=pass_id
        )
        for ch in channels
    }


# --- after a pass ---------------------------------------------------------------------------


def _failed_runs(
    summary: PassSummary, new: frozenset[str], ctx: Context
) -> tuple[tuple[FailedRun, ...], tuple[str, ...]]:
    runs: list[FailedRun] = []
    pass_errors: list[str] = []
    for f in summary.failures:
        error = redact(f.error, ctx.settings)
        if f.run_id is None:
            pass_errors.append(error)
            continue
        runs.append(
            FailedRun(
                run_id=f.run_id,
                pipeline_name=f.pipeline_name or "?",
                started_at=f.started_at,
                error=error,
                new=f.run_id in new,
            )
        )
    return tuple(runs), tuple(dict.fromkeys(pass_errors))


def failure_keys(summary: PassSummary) -> list[str]:
    """What failed in the pass: run ids, and ``PASS_KEY`` for a failure of the whole pass."""
    return [f.run_id if f.run_id is not None else PASS_KEY for f in summary.failures]


def after_pass(
    ctx: Context,
    summary: PassSummary,
    *,
    now: datetime | None = None,
    options: DeliveryOptions | None = None,
) -> Delivery:
    """Announce what the committed pass ``summary`` means for the incident, in the background.

    Returns at once with a handle; ``handle.wait(CLI_WAIT_S)`` lets a short-lived process
    give the delivery time to finish. Never raises.
    """
    try:
        if summary.dry_run or summary.pass_id is None:
            return Delivery.nothing()
        now = now or utcnow()
        applied = records.apply_pass(ctx.db, failure_keys(summary), summary.pass_id, now)
        decision = applied.decision
        if decision.kind is None:
            return Delivery.nothing()
        notice = _notice(ctx, summary, decision.kind, now, applied)
        channels = enabled_channels(ctx)
        log.info("backup notification (%s): %s", notice.kind.value, messages.subject(notice))
        if not channels:
            return Delivery.nothing(notice.kind)
        rows = _start_rows(ctx, channels, notice, applied.incident_id, summary.pass_id)
        delivery = Delivery(notice.kind)
        opts = options or DeliveryOptions()

        def job() -> None:
            results: list[ChannelResult] = []
            try:
                results = _deliver(ctx, notice, rows, opts)
            except Exception as e:
                log.error(
                    "notification delivery failed: %s",
                    redact(f"{type(e).__name__}: {e}", ctx.settings),
                )
            finally:
                delivery._finish(results)

        _worker_for(ctx.db).submit(job)
        return delivery
    except Exception as e:
        log.error(
            "cannot notify about cleanup pass %s: %s",
            summary.pass_id,
            _safe(ctx, f"{type(e).__name__}: {e}"),
        )
        return Delivery.nothing()


def _notice(
    ctx: Context, summary: PassSummary, kind: Kind, now: datetime, applied: records.Applied
) -> Notice:
    base = ctx.settings.fastflow_base_url
    decision = applied.decision
    if kind == Kind.RECOVERY:
        ended = decision.ended
        assert ended is not None
        run_keys = [k for k in ended.known if k != PASS_KEY]
        return Notice(
            kind=kind,
            at=now,
            base_url=base,
            since=ended.opened_at,
            archived_runs=summary.archived_runs,
            incident_runs=len(run_keys),
            recovered_runs=records.archived_among(ctx.db, run_keys),
        )
    runs, pass_errors = _failed_runs(summary, decision.new_keys, ctx)
    incident = decision.incident
    return Notice(
        kind=kind,
        at=now,
        base_url=base,
        runs=runs,
        total_runs=max(len(runs), summary.backup_failures - len(pass_errors)),
        pass_errors=pass_errors,
        new_runs=len(decision.new_keys),
        since=incident.opened_at if incident else None,
        skipped_runs=summary.skipped_runs,
    )


def _safe(ctx: Context, text: str) -> str:
    try:
        return redact(text, ctx.settings)
    except Exception:
        return "(details withheld)"


# --- test messages and the record -----------------------------------------------------------


def send_test(
    ctx: Context,
    *,
    email: bool,
    teams: bool,
    options: DeliveryOptions | None = None,
) -> list[ChannelResult]:
    """Send a test message now on the chosen channels, through the normal delivery path.

    A chosen channel that is disabled is reported as a failure, not silently skipped.
    Never raises; waits for the outcome (at most about ``budget_s``).
    """
    now = utcnow()
    wanted = [name for name, on in (("email", email), ("teams", teams)) if on]
    results: list[ChannelResult] = []
    try:
        notice = Notice(kind=Kind.TEST, at=now, base_url=ctx.settings.fastflow_base_url)
        live = enabled_channels(ctx)
        for channel in wanted:
            if channel not in live:
                label, var = _LABELS[channel]
                error = f"{label} notifications are disabled ({var} is not true)"
                results.append(ChannelResult(channel, False, error, now))
        rows = _start_rows(ctx, [c for c in wanted if c in live], notice, None, None)
        results += _deliver(ctx, notice, rows, options or DeliveryOptions())
    except Exception as e:
        error = _safe(ctx, f"{type(e).__name__}: {e}")
        log.error("test notification failed: %s", error)
        done = {r.channel for r in results}
        results += [ChannelResult(c, False, error, now) for c in wanted if c not in done]
    order = {name: i for i, name in enumerate(wanted)}
    return sorted(results, key=lambda r: order.get(r.channel, 99))


def last_results(ctx: Context) -> dict[str, dict[str, Any]]:
    """The last delivery result per channel, for ``GET /api/settings`` and the UI."""
    try:
        out = records.last_results(ctx.db)
    except Exception as e:
        log.error("cannot read the notification deliveries: %s", type(e).__name__)
        out = {c: {"ok": None, "error": None, "at": None, "kind": None} for c in records.CHANNELS}
    for channel in enabled_channels(ctx):
        out.setdefault(channel, {})["enabled"] = True
    for channel, entry in out.items():
        entry.setdefault("enabled", False)
        entry["channel"] = channel
    return out
