"""Persistence of the notifier: the incident state between passes and the delivery record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from fastflow.archive import ledger
from fastflow.db.engine import Database
from fastflow.db.models import utcnow
from fastflow.notify.incidents import PASS_KEY, Decision, Incident, decide
from fastflow.notify.models import NotificationDelivery, NotificationIncident
from fastflow.notify.retry import Outcome

CHANNELS = ("email", "teams")
MAX_DELIVERY_ROWS = 1000
# A delivery still "in progress" after this long was cut short (the CLI process exited).
ABANDONED_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class Applied:
    """A decision and the incident row it concerns (None when there is none)."""

    decision: Decision
    incident_id: int | None


def _state(row: NotificationIncident) -> Incident:
    return Incident(
        opened_at=row.opened_at,
        last_announced_at=row.last_announced_at,
        known=frozenset(json.loads(row.known_keys)),
        failing=frozenset(json.loads(row.failing_keys)),
        announcements=row.announcements,
    )


def _dump(keys: frozenset[str]) -> str:
    return json.dumps(sorted(keys))


def apply_pass(db: Database, keys: Iterable[str], pass_id: int | None, now: datetime) -> Applied:
    """Decide what the pass announces and store the new incident state, atomically.

    A pass at or before the one the open incident last saw changes nothing (so calling
    twice for the same pass, or out of order, never announces twice).
    """
    with db.session() as s:
        row = s.scalars(
            select(NotificationIncident)
            .where(NotificationIncident.closed_at.is_(None))
            .order_by(NotificationIncident.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        stale = (
            row is not None
            and pass_id is not None
            and row.last_pass_id is not None
            and pass_id <= row.last_pass_id
        )
        if stale:
            assert row is not None
            return Applied(Decision(None, _state(row)), row.id)
        decision = decide(_state(row) if row is not None else None, keys, now)
        state = decision.incident
        if row is None and state is not None:
            row = NotificationIncident(
                opened_at=state.opened_at,
                last_announced_at=state.last_announced_at,
                known_keys=_dump(state.known),
                failing_keys=_dump(state.failing),
                announcements=state.announcements,
                last_pass_id=pass_id,
            )
            s.add(row)
            s.flush()
        elif row is not None and state is not None:
            row.last_announced_at = state.last_announced_at
            row.known_keys = _dump(state.known)
            row.failing_keys = _dump(state.failing)
            row.announcements = state.announcements
            row.last_pass_id = pass_id
        elif row is not None:  # recovery
            row.closed_at = now
            row.last_pass_id = pass_id
        return Applied(decision, row.id if row is not None else None)


def archived_among(db: Database, keys: Iterable[str]) -> int:
    """How many of the run ids in ``keys`` have an archive ledger entry."""
    ids: list[uuid.UUID] = []
    for key in keys:
        if key == PASS_KEY:
            continue
        try:
            ids.append(uuid.UUID(key))
        except ValueError:
            continue
    return ledger.count_archived(db, ids)


def start_delivery(
    db: Database,
    kind: str,
    channel: str,
    subject: str,
    *,
    incident_id: int | None = None,
    pass_id: int | None = None,
) -> int:
    """Record a delivery as in progress; returns its id."""
    with db.session() as s:
        row = NotificationDelivery(
            kind=kind,
            channel=channel,
            subject=subject,
            created_at=utcnow(),
            incident_id=incident_id,
            pass_id=pass_id,
            attempts=0,
        )
        s.add(row)
        s.flush()
        return row.id


def finish_delivery(db: Database, delivery_id: int, outcome: Outcome) -> datetime:
    """Record how a delivery ended; returns the time recorded."""
    at = utcnow()
    with db.session() as s:
        s.execute(
            update(NotificationDelivery)
            .where(NotificationDelivery.id == delivery_id)
            .values(ok=outcome.ok, error=outcome.error, attempts=outcome.attempts, finished_at=at)
        )
    return at


def prune(db: Database) -> None:
    """Keep the newest ``MAX_DELIVERY_ROWS`` deliveries."""
    with db.session() as s:
        cutoff = s.scalar(
            select(NotificationDelivery.id)
            .order_by(NotificationDelivery.id.desc())
            .offset(MAX_DELIVERY_ROWS)
            .limit(1)
        )
        if cutoff is not None:
            s.execute(delete(NotificationDelivery).where(NotificationDelivery.id <= cutoff))


def last_results(db: Database, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """The newest delivery per channel: ``{"ok", "error", "at", "kind"}`` (all None when
    the channel never sent anything; ``ok`` None while a delivery is in progress)."""
    now = now or utcnow()
    out: dict[str, dict[str, Any]] = {}
    with db.session() as s:
        for channel in CHANNELS:
            row = s.scalars(
                select(NotificationDelivery)
                .where(NotificationDelivery.channel == channel)
                .order_by(NotificationDelivery.id.desc())
                .limit(1)
            ).first()
            if row is None:
                out[channel] = {"ok": None, "error": None, "at": None, "kind": None}
                continue
            ok, error = row.ok, row.error
            if ok is None and now - row.created_at > ABANDONED_AFTER:
                ok, error = False, "delivery did not finish (the process ended first)"
            at = row.finished_at or row.created_at
            out[channel] = {"ok": ok, "error": error, "at": at.isoformat(), "kind": row.kind}
    return out
