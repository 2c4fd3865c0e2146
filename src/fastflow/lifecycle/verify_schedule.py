"""Scheduled archive verification (``ARCHIVE_VERIFY_SCHEDULE``, default ``0 3 * * 0``) in
``fastflow serve``, and what a verification means for the integrity incident.

Each run HEADs every archived object, re-hashes ``ARCHIVE_VERIFY_DEEP_SAMPLE`` objects
(those re-hashed longest ago first, so every object is re-hashed over time) and checks the
manifest chain (``archive.audit.run_verification``); the result is recorded. A missing or
altered object (or a damaged manifest) opens the incident ``("integrity", "archive")`` —
bell, e-mail, Teams, reminders as for every incident; the next verification that finds
everything intact resolves it. One that could not finish (S3 down) changes nothing: the
backup failures report an unreachable server.

The verification runs in the scheduler's own thread: it waits on the network (HEAD and
GET requests), and re-hashing releases the GIL, so the API stays responsive; memory is
bounded by one batch of ledger entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from fastflow.archive import audit
from fastflow.context import Context
from fastflow.lifecycle.scheduler import CronThread
from fastflow.notify.delivery import Delivery
from fastflow.notify.retry import DeliveryOptions
from fastflow.notify.system import raise_incident, resolve_incident

log = logging.getLogger("fastflow.verify")

INCIDENT_KIND = "integrity"
INCIDENT_KEY = "archive"
MAX_LISTED = 10  # problems named in a message


def verify_and_notify(
    ctx: Context,
    trigger: str = "schedule",
    *,
    now: datetime | None = None,
    options: DeliveryOptions | None = None,
) -> tuple[audit.Verification | None, Delivery]:
    """Run and record one full verification, then open, update or resolve the
    integrity incident. ``(None, nothing)`` when S3 backup is disabled. Never raises."""
    if not ctx.settings.s3_backup_enabled:
        log.info("archive verification skipped: S3 backup is disabled")
        return None, Delivery.nothing()
    try:
        result = audit.run_verification(ctx, trigger, now=now)
    except Exception as e:  # the database itself failed: nothing was recorded
        log.error("archive verification failed: %s: %s", type(e).__name__, e)
        return None, Delivery.nothing()
    log.info(
        "archive verification: %d objects checked, %d re-hashed, %d damaged, %d manifests%s",
        result.objects_checked,
        result.objects_deep_checked,
        result.objects_damaged,
        result.manifests_checked,
        f"; {result.error}" if result.error else "",
    )
    return result, apply_incident(ctx, result, options=options)


def apply_incident(
    ctx: Context, result: audit.Verification, *, options: DeliveryOptions | None = None
) -> Delivery:
    """Damage opens (or updates) the integrity incident, a clean result resolves it, an
    unfinished one (``error``, or only read errors) leaves it as it is."""
    bucket = ctx.settings.s3_bucket or "?"
    if result.objects_damaged:
        n = result.objects_damaged
        title = f"Archive integrity: {n} damaged object{'s' if n != 1 else ''} in {bucket}"
        return raise_incident(
            ctx, INCIDENT_KIND, INCIDENT_KEY, title, damage_detail(result), options=options
        )
    if result.ok:
        detail = (
            f"The verification of {_at(result)} found every object intact: "
            f"{result.objects_checked} objects checked, {result.objects_deep_checked} "
            f"re-hashed, {result.manifests_checked} manifests."
        )
        return resolve_incident(ctx, INCIDENT_KIND, INCIDENT_KEY, detail, options=options)
    return Delivery.nothing()


def damage_detail(result: audit.Verification) -> str:
    """What the verification found, in a few lines (the first ``MAX_LISTED`` problems)."""
    lines = [
        f"The verification of {_at(result)} checked {result.objects_checked} objects, "
        f"re-hashed {result.objects_deep_checked} and read {result.manifests_checked} "
        f"manifests: {result.objects_damaged} damaged.",
    ]
    for p in result.problems[:MAX_LISTED]:
        where = p.get("key") or p.get("manifest") or ""
        run = f" (run {p['run_id']})" if p.get("run_id") else ""
        lines.append(f"- {str(p.get('state', '?')).upper()} {where}{run}: {p.get('detail', '')}")
    if len(result.problems) > MAX_LISTED:
        lines.append(f"- and {len(result.problems) - MAX_LISTED} more")
    lines.append(
        "Details: `fastflow archive verifications`, `fastflow archive verify --deep` and "
        "`fastflow archive verify --manifests`."
    )
    return "\n".join(lines)


def _at(result: audit.Verification) -> str:
    return result.started_at.strftime("%Y-%m-%d %H:%M UTC")


def next_verification_at(ctx: Context) -> datetime | None:
    """When the verification scheduler of ``ctx`` runs next; None when none runs here."""
    from fastflow.lifecycle.scheduler import _schedulers

    times = [t for s in _schedulers(ctx) if isinstance(s, VerifyScheduler) and (t := s.next_at)]
    return min(times) if times else None


class VerifyScheduler(CronThread):
    """Runs ``verify_and_notify`` on ``ARCHIVE_VERIFY_SCHEDULE`` (``on_done`` gets each
    result and its delivery)."""

    what = "archive verification"
    thread_name = "verify-scheduler"

    def __init__(
        self,
        ctx: Context,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        on_done: Callable[[audit.Verification | None, Delivery], None] | None = None,
        options: DeliveryOptions | None = None,
    ) -> None:
        super().__init__(ctx, clock)
        self._on_done = on_done
        self._options = options

    def _expression(self) -> str:
        return self.ctx.settings.archive_verify_schedule

    def _job(self) -> None:
        try:
            result, delivery = verify_and_notify(self.ctx, "schedule", options=self._options)
            if self._on_done is not None:
                self._on_done(result, delivery)
        except Exception:
            log.exception("scheduled archive verification failed")
