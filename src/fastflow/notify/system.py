"""Incidents of fastflow itself — a damaged archive (``"integrity"``), a filling disk
(``"disk"``) — announced by e-mail and on Teams through the same delivery path as backup
failures, and shown in the web UI's bell until resolved.

Guarantees (pinned by ``tests/notify/test_system_incidents.py``):

- one incident per ``(kind, key)``: the first ``raise_incident`` announces it once; later
  calls only update its title and detail, and send a reminder once the last announcement
  is ``NOTIFY_REMINDER_HOURS`` old; ``resolve_incident`` closes it with one recovery
  message (nothing when none is open); the next ``raise_incident`` opens it anew;
- concurrent calls (threads, processes, servers on one PostgreSQL) announce once: the
  state changes under a row lock (SQLite: the write lock, taken first);
- the callers only wait for the database: messages leave in the notification worker
  (``delivery.submit``), bounded by ``DeliveryOptions.budget_s`` per channel;
- nothing raises: a failure is logged (and recorded as a failed delivery) instead;
- titles and details pass the redactor before they are stored, logged or sent.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fastflow.context import Context
from fastflow.db.engine import Database, is_postgres
from fastflow.db.models import SystemIncident, utcnow
from fastflow.notify import records
from fastflow.notify.delivery import (
    Delivery,
    enabled_channels,
    log,
    reminder_interval,
    safe,
    submit,
)
from fastflow.notify.incidents import Kind
from fastflow.notify.messages import SUBJECT_PREFIX, Message, adaptive_card_message, when
from fastflow.notify.retry import DeliveryOptions

MAX_KIND_CHARS = 32
MAX_KEY_CHARS = 255
MAX_TITLE_CHARS = 200
MAX_DETAIL_CHARS = 4000  # stored and e-mailed
MAX_CARD_DETAIL_CHARS = 1500  # a Teams card stays far below its ~28 KB limit
# delivery record kinds (``notification_deliveries.kind``, at most 16 characters)
RECORD_KINDS = {
    Kind.FAILURE: "system_failure",
    Kind.REMINDER: "system_reminder",
    Kind.RECOVERY: "system_recovery",
}
_LOCK_KEY = 0x66667379  # "ffsy": one system-incident change at a time (PostgreSQL)


@dataclass(frozen=True)
class SystemNotice:
    """What one system-incident message says."""

    kind: Kind  # FAILURE (opened), REMINDER (still open) or RECOVERY (resolved)
    incident_kind: str
    key: str
    title: str
    detail: str
    since: datetime
    at: datetime
    base_url: str

    @property
    def settings_url(self) -> str:
        return f"{self.base_url}/settings"


# --- the API ---------------------------------------------------------------------------------


def raise_incident(
    ctx: Context,
    kind: str,
    key: str,
    title: str,
    detail: str,
    *,
    now: datetime | None = None,
    options: DeliveryOptions | None = None,
) -> Delivery:
    """Open or update the incident (kind, key): the first time (and as a reminder every
    NOTIFY_REMINDER_HOURS) a message goes out by e-mail and Teams through the existing
    delivery path; it shows in the web UI's bell until resolved.

    Returns at once with a handle on the background delivery. Never raises."""
    try:
        now = now or utcnow()
        kind, key = kind[:MAX_KIND_CHARS], key[:MAX_KEY_CHARS]
        title = _cut(safe(ctx, title), MAX_TITLE_CHARS)
        detail = _cut_block(safe(ctx, detail), MAX_DETAIL_CHARS)
        announce, since = _apply_raise(
            ctx.db, kind, key, title, detail, now, reminder_interval(ctx)
        )
        if announce is None:
            return Delivery.nothing()
        notice = SystemNotice(
            announce, kind, key, title, detail, since, now, ctx.settings.fastflow_base_url
        )
        return _announce(ctx, notice, options)
    except Exception as e:
        log.error("cannot raise the %s incident %s: %s", kind, key, _error(ctx, e))
        return Delivery.nothing()


def resolve_incident(
    ctx: Context,
    kind: str,
    key: str,
    detail: str = "",
    *,
    now: datetime | None = None,
    options: DeliveryOptions | None = None,
) -> Delivery:
    """Close it if open: one recovery message. Nothing happens when it is not open.

    Returns at once with a handle on the background delivery. Never raises."""
    try:
        now = now or utcnow()
        kind, key = kind[:MAX_KIND_CHARS], key[:MAX_KEY_CHARS]
        detail = _cut_block(safe(ctx, detail), MAX_DETAIL_CHARS)
        closed = _apply_resolve(ctx.db, kind, key, now)
        if closed is None:
            return Delivery.nothing()
        title, since = closed
        notice = SystemNotice(
            Kind.RECOVERY, kind, key, title, detail, since, now, ctx.settings.fastflow_base_url
        )
        return _announce(ctx, notice, options)
    except Exception as e:
        log.error("cannot resolve the %s incident %s: %s", kind, key, _error(ctx, e))
        return Delivery.nothing()


def open_incidents(ctx: Context, kind: str | None = None) -> list[dict[str, Any]]:
    """Open incidents, newest first: {kind, key, title, detail, since, updated_at}
    (ISO 8601 times). Never raises (an empty list instead)."""
    try:
        q = select(SystemIncident).where(SystemIncident.closed_at.is_(None))
        if kind is not None:
            q = q.where(SystemIncident.kind == kind)
        q = q.order_by(SystemIncident.opened_at.desc(), SystemIncident.kind, SystemIncident.key)
        with ctx.db.session() as s:
            rows = s.scalars(q).all()
        return [
            {
                "kind": r.kind,
                "key": r.key,
                "title": r.title,
                "detail": r.detail,
                "since": r.opened_at.isoformat(),
                "updated_at": r.updated_at.isoformat(),
            }
            for r in rows
        ]
    except Exception as e:
        log.error("cannot read the system incidents: %s", _error(ctx, e))
        return []


# --- state -----------------------------------------------------------------------------------


def _serialise(s: Session, db: Database) -> None:
    """Make concurrent changes wait for each other (read, then write)."""
    if is_postgres(db.engine):
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    else:  # a first write takes SQLite's write lock for the whole transaction
        s.execute(
            update(SystemIncident)
            .where(SystemIncident.kind == "")
            .values(announcements=SystemIncident.announcements)
        )


def _apply_raise(
    db: Database,
    kind: str,
    key: str,
    title: str,
    detail: str,
    now: datetime,
    interval: timedelta,
) -> tuple[Kind | None, datetime]:
    """Store the raised incident; what to announce (None: nothing) and since when it is
    open."""
    for attempt in range(3):
        try:
            with db.session() as s:
                _serialise(s, db)
                row = s.get(SystemIncident, (kind, key))
                if row is None:
                    s.add(
                        SystemIncident(
                            kind=kind,
                            key=key,
                            title=title,
                            detail=detail,
                            opened_at=now,
                            updated_at=now,
                            last_announced_at=now,
                            announcements=1,
                        )
                    )
                    return Kind.FAILURE, now
                row.title, row.detail, row.updated_at = title, detail, now
                if row.closed_at is not None:  # reopened
                    row.closed_at = None
                    row.opened_at = row.last_announced_at = now
                    row.announcements = 1
                    return Kind.FAILURE, now
                if now - row.last_announced_at >= interval:
                    row.last_announced_at = now
                    row.announcements += 1
                    return Kind.REMINDER, row.opened_at
                return None, row.opened_at
        except IntegrityError:  # another process inserted the row first: read it again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _apply_resolve(db: Database, kind: str, key: str, now: datetime) -> tuple[str, datetime] | None:
    """Close the incident; (title, opened_at) when one was open, else None."""
    with db.session() as s:
        _serialise(s, db)
        row = s.get(SystemIncident, (kind, key))
        if row is None or row.closed_at is not None:
            return None
        row.closed_at = row.updated_at = now
        return row.title, row.opened_at


# --- messages --------------------------------------------------------------------------------


def _announce(ctx: Context, notice: SystemNotice, options: DeliveryOptions | None) -> Delivery:
    message = render(notice)
    log.info("system notification (%s): %s", RECORD_KINDS[notice.kind], message.subject)
    channels = enabled_channels(ctx)
    if not channels:
        return Delivery.nothing(notice.kind)
    rows: dict[str, int | None] = {
        ch: records.start_delivery(ctx.db, RECORD_KINDS[notice.kind], ch, message.subject)
        for ch in channels
    }
    delivery = Delivery(notice.kind)
    submit(ctx, delivery, rows, lambda: message, options or DeliveryOptions())
    return delivery


def headline(n: SystemNotice) -> str:
    if n.kind == Kind.RECOVERY:
        return f"Resolved: {n.title}"
    if n.kind == Kind.REMINDER:
        return f"Still open since {when(n.since)}: {n.title}"
    return n.title


def _paragraphs(n: SystemNotice) -> list[str]:
    out: list[str] = []
    if n.kind == Kind.RECOVERY:
        out.append(f"Resolved at {when(n.at)}; open since {when(n.since)}.")
    elif n.kind == Kind.REMINDER:
        out.append(f"This {n.incident_kind} incident is still open (since {when(n.since)}).")
    else:
        out.append(f"fastflow opened a {n.incident_kind} incident at {when(n.at)}.")
    return out


def render(n: SystemNotice) -> Message:
    """Every channel's words for ``n`` (pure)."""
    title = headline(n)
    intro = _paragraphs(n)
    lines = [*intro, ""]
    if n.detail:
        lines += [n.detail, ""]
    lines += [f"Details: {n.settings_url}", "", "-- ", "fastflow"]
    e = html.escape
    detail_html = "".join(f"<p>{e(p)}</p>" for p in n.detail.split("\n") if p.strip())
    body_html = (
        "<!DOCTYPE html>\n"
        '<html><body style="font-family: sans-serif; font-size: 14px; color: #1f2328">\n'
        f'<h2 style="font-size: 18px">{e(title)}</h2>\n'
        + "".join(f"<p>{e(p)}</p>\n" for p in intro)
        + detail_html
        + f'\n<p><a href="{e(n.settings_url)}">Details</a></p></body></html>\n'
    )
    card_body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "size": "Medium",
            "style": "heading",
            "color": "Good" if n.kind == Kind.RECOVERY else "Attention",
            "wrap": True,
        },
        *({"type": "TextBlock", "text": p, "wrap": True} for p in intro),
    ]
    if n.detail:
        card_body.append(
            {"type": "TextBlock", "text": _cut_block(n.detail, MAX_CARD_DETAIL_CHARS), "wrap": True}
        )
    card_body.append(
        {
            "type": "FactSet",
            "facts": [
                {"title": "Incident", "value": f"{n.incident_kind}: {n.key}"},
                {"title": "Open since", "value": when(n.since)},
            ],
        }
    )
    return Message(
        kind=n.kind,
        at=n.at,
        subject=f"{SUBJECT_PREFIX} {_cut(title, 200)}",
        text="\n".join(lines) + "\n",
        html=body_html,
        card=adaptive_card_message(card_body, "Open settings", n.settings_url),
    )


def _cut(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _cut_block(value: str, limit: int) -> str:
    value = value.strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _error(ctx: Context, e: Exception) -> str:
    return safe(ctx, f"{type(e).__name__}: {e}")
