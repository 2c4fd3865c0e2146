"""After a pass: decide, record, and deliver in the background — never raising, never blocking.

Guarantees (guarantee 6 of DESIGN.md; pinned by ``tests/notify/test_notify_pass.py``):

- ``after_pass`` only reads and writes the database (the incident state and one
  "in progress" delivery row per channel) before it returns; all network traffic happens
  in a background thread (``delivery.submit``), so a down SMTP server or a hanging webhook
  cannot delay the caller, and deletion decisions were taken before it is even called;
- no exception escapes ``after_pass``, ``send_test`` or ``last_results``: failures are
  logged and recorded as a delivery with ``ok = False``;
- one delivery per channel takes at most ``DeliveryOptions.budget_s`` (18 s by default),
  so ``fastflow cleanup`` can wait ``CLI_WAIT_S`` (``cli_wait``) and still see the
  outcome recorded;
- deliveries of one database leave in the order of their passes (one worker per database);
- nothing logged, recorded or sent contains a secret (``redact``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastflow.context import Context
from fastflow.db.models import utcnow
from fastflow.notify import messages, records
from fastflow.notify.delivery import (
    ChannelResult,
    Delivery,
    deliver,
    enabled_channels,
    log,
    reminder_interval,
    safe,
    start_rows,
    submit,
)
from fastflow.notify.incidents import PASS_KEY, Kind
from fastflow.notify.messages import FailedRun, Notice
from fastflow.notify.retry import DeliveryOptions
from fastflow.security import redact

if TYPE_CHECKING:
    from fastflow.config import Settings
    from fastflow.lifecycle.cleanup import PassSummary

_LABELS = {"email": ("e-mail", "EMAIL_ENABLED"), "teams": ("Teams", "TEAMS_ENABLED")}


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

    Returns at once with a handle; ``cli_wait(handle)`` lets a short-lived process
    give the delivery time to finish. Never raises.
    """
    try:
        if summary.dry_run:
            return Delivery.nothing()
        now = now or utcnow()
        if summary.pass_id is None:  # not even recorded: the database cannot be written
            if summary.error is None:
                return Delivery.nothing()
            return _unrecorded(ctx, summary.error, now, options or DeliveryOptions())
        applied = records.apply_pass(
            ctx.db,
            failure_keys(summary),
            summary.pass_id,
            now,
            reminder_interval=reminder_interval(ctx),
        )
        decision = applied.decision
        channels = enabled_channels(ctx)
        kind = decision.kind
        if kind is None:  # nothing new: unless the last message did not get through
            if applied.repeated:
                return Delivery.nothing()
            if decision.incident is None:  # all well: was the recovery told everywhere?
                applied = _recovery_again(ctx, applied, now)
                if applied.incident_id is None:
                    return Delivery.nothing()
                decision, kind = applied.decision, Kind.RECOVERY
            else:
                kind = Kind.REMINDER
            assert applied.incident_id is not None
            channels = records.undelivered(ctx.db, applied.incident_id, channels, now)
            if not channels:
                return Delivery.nothing()
            log.warning(
                "the last backup notification was not delivered on %s: sending it again",
                ", ".join(channels),
            )
        notice = _notice(ctx, summary, kind, now, applied)
        subject = messages.subject(notice)
        log.info("backup notification (%s): %s", notice.kind.value, subject)
        if not channels:
            return Delivery.nothing(notice.kind)
        rows = start_rows(ctx, channels, notice.kind, subject, applied.incident_id, summary.pass_id)
        delivery = Delivery(notice.kind)
        opts = options or DeliveryOptions()
        submit(ctx, delivery, rows, lambda: messages.render(notice), opts)
        return delivery
    except Exception as e:
        log.error(
            "cannot notify about cleanup pass %s: %s",
            summary.pass_id,
            safe(ctx, f"{type(e).__name__}: {e}"),
        )
        return Delivery.nothing()


def _recovery_again(ctx: Context, applied: records.Applied, now: datetime) -> records.Applied:
    """``applied`` for the incident closed last (its recovery, to send again where it
    did not get through); incident id None when there is none, or when it closed longer
    than ``NOTIFY_REMINDER_HOURS`` ago (stale news by then)."""
    closed = records.last_closed(ctx.db, now - reminder_interval(ctx))
    if closed is None:
        return applied
    incident_id, ended = closed
    return records.Applied(replace(applied.decision, ended=ended), incident_id)


_unrecorded_at: list[datetime] = []  # when this process last sent ``_unrecorded``


def _unrecorded(ctx: Context, error: str, now: datetime, options: DeliveryOptions) -> Delivery:
    """A pass that failed before the database could record it (the database's disk full,
    the database away): the incident cannot be kept, so this process tells the enabled
    channels directly — at most once per ``NOTIFY_REMINDER_HOURS`` (a server), once per
    ``fastflow cleanup`` — with nothing recorded."""
    if _unrecorded_at and now - _unrecorded_at[-1] < reminder_interval(ctx):
        return Delivery.nothing()
    channels = enabled_channels(ctx)
    notice = _unrecorded_notice(ctx, error, now)
    log.error("backup notification without the database: %s", messages.subject(notice))
    if not channels:
        return Delivery.nothing(notice.kind)
    _unrecorded_at[:] = [now]
    delivery = Delivery(notice.kind)
    rows: dict[str, int | None] = dict.fromkeys(channels)
    submit(ctx, delivery, rows, lambda: messages.render(notice), options)
    return delivery


def without_database(
    settings: Settings, error: str, *, options: DeliveryOptions | None = None
) -> list[ChannelResult]:
    """``fastflow cleanup`` that cannot even open its database (its disk full): tell the
    channels enabled in the environment (the overrides saved in the database cannot be
    read), waiting for the delivery; nothing is recorded. Never raises."""
    from fastflow.db.engine import Database

    try:
        ctx = Context(settings=settings, db=Database(settings))  # (never connected here)
        now = utcnow()
        channels = enabled_channels(ctx)
        notice = _unrecorded_notice(ctx, error, now)
        log.error("backup notification without the database: %s", messages.subject(notice))
        opts = options or DeliveryOptions()
        return deliver(ctx, messages.render(notice), dict.fromkeys(channels), opts)
    except Exception as e:
        log.error("cannot notify without the database: %s", type(e).__name__)
        return []


def _unrecorded_notice(ctx: Context, error: str, now: datetime) -> Notice:
    return Notice(
        kind=Kind.FAILURE,
        at=now,
        base_url=ctx.settings.fastflow_base_url,
        pass_errors=(safe(ctx, error) + " (the database could not record the pass)",),
        since=now,
    )


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
        sending = [c for c in wanted if c in live]
        rows = start_rows(ctx, sending, notice.kind, messages.subject(notice), None)
        results += deliver(ctx, messages.render(notice), rows, options or DeliveryOptions())
    except Exception as e:
        error = safe(ctx, f"{type(e).__name__}: {e}")
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
