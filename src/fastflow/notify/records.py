"""Persistence of the notifier: the incident state between passes and runs, and the
delivery record.

Both kinds of incident live in ``notification_incidents``. A run incident is told apart by
its ``known_keys``: exactly ``["run:<pipeline>"]`` (backup incidents hold run ids or
``"pass"``); its ``failing_keys`` holds ``{"failures", "status", "runs"}`` (a JSON object)
and ``last_pass_id`` stays NULL. At most one run incident per pipeline is open: changes
are serialised (PostgreSQL advisory lock; SQLite write lock taken first).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select, text, update
from sqlalchemy.orm import Session

from fastflow.archive import ledger
from fastflow.db.engine import Database, is_postgres
from fastflow.db.models import utcnow
from fastflow.notify.incidents import (
    PASS_KEY,
    REMINDER_INTERVAL,
    RUN_SUCCESS_STATUS,
    Decision,
    Incident,
    RunDecision,
    RunIncident,
    decide,
    decide_run,
)
from fastflow.notify.models import NotificationDelivery, NotificationIncident
from fastflow.notify.retry import Outcome

CHANNELS = ("email", "teams")
MAX_DELIVERY_ROWS = 1000
# A delivery still "in progress" after this long was cut short (the CLI process exited).
ABANDONED_AFTER = timedelta(minutes=2)
RUN_KEY_PREFIX = "run:"
RUN_INCIDENT_LOCK_KEY = 0x6666726E  # "ffrn": one run-incident change at a time (PostgreSQL)
MAX_CLOSED_RUN_INCIDENTS = 1000  # closed run incidents kept (the newest)
_IS_RUN = NotificationIncident.known_keys.like(f'["{RUN_KEY_PREFIX}%')


@dataclass(frozen=True)
class Applied:
    """A decision and the incident row it concerns (None when there is none)."""

    decision: Decision
    incident_id: int | None
    repeated: bool = False  # a pass the incident had seen already: nothing to announce


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


def apply_pass(
    db: Database,
    keys: Iterable[str],
    pass_id: int | None,
    now: datetime,
    *,
    reminder_interval: timedelta = REMINDER_INTERVAL,
) -> Applied:
    """Decide what the pass announces and store the new incident state, atomically.

    A pass at or before the one the open incident last saw changes nothing (so calling
    twice for the same pass, or out of order, never announces twice).
    """
    with db.session() as s:
        row = s.scalars(
            select(NotificationIncident)
            .where(NotificationIncident.closed_at.is_(None), ~_IS_RUN)
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
            return Applied(Decision(None, _state(row)), row.id, repeated=True)
        previous = _state(row) if row is not None else None
        decision = decide(previous, keys, now, reminder_interval=reminder_interval)
        row = _store_pass(s, row, decision.incident, pass_id, now)
        return Applied(decision, row.id if row is not None else None)


def last_closed(db: Database, since: datetime) -> tuple[int, Incident] | None:
    """The backup incident closed last, if at or after ``since``: (its id, its state)."""
    with db.session() as s:
        row = _closed_last(s, since, ~_IS_RUN)
        return None if row is None else (row.id, _state(row))


def _closed_last(
    s: Session, since: datetime, which: ColumnElement[bool]
) -> NotificationIncident | None:
    """The incident matching ``which`` closed last, if at or after ``since``."""
    return s.scalars(
        select(NotificationIncident)
        .where(which, NotificationIncident.closed_at >= since)
        .order_by(NotificationIncident.closed_at.desc(), NotificationIncident.id.desc())
        .limit(1)
    ).first()


def _store_pass(
    s: Session,
    row: NotificationIncident | None,
    state: Incident | None,
    pass_id: int | None,
    now: datetime,
) -> NotificationIncident | None:
    """Write ``state`` (None: the incident ended) into ``row`` (None: no incident was open)."""
    if state is None:
        if row is not None:  # recovery
            row.closed_at = now
            row.last_pass_id = pass_id
        return row
    if row is None:
        row = NotificationIncident(opened_at=state.opened_at)
        s.add(row)
    row.last_announced_at = state.last_announced_at
    row.known_keys = _dump(state.known)
    row.failing_keys = _dump(state.failing)
    row.announcements = state.announcements
    row.last_pass_id = pass_id
    s.flush()
    return row


# --- run incidents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedRun:
    """A run decision and the incident row it concerns (None when there is none)."""

    decision: RunDecision
    incident_id: int | None
    # a SUCCESS with no incident open (``on_recovery``): the pipeline's incident closed
    # within the reminder interval, whose recovery may not have got through everywhere
    closed: tuple[int, RunIncident] | None = None


def run_key(pipeline: str) -> str:
    return RUN_KEY_PREFIX + pipeline


def _run_keys(pipeline: str) -> str:
    return json.dumps([run_key(pipeline)])


def _run_state(row: NotificationIncident) -> RunIncident:
    data = json.loads(row.failing_keys)
    return RunIncident(
        opened_at=row.opened_at,
        last_announced_at=row.last_announced_at,
        failures=int(data.get("failures", 1)),
        recent=tuple(str(r) for r in data.get("runs", [])),
        last_status=str(data.get("status", "")),
        announcements=row.announcements,
    )


def _run_dump(state: RunIncident) -> str:
    return json.dumps(
        {"failures": state.failures, "status": state.last_status, "runs": list(state.recent)}
    )


def _serialise(s: Session, db: Database) -> None:
    """Make concurrent changes of run incidents wait for each other (read, then write)."""
    if is_postgres(db.engine):
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": RUN_INCIDENT_LOCK_KEY})
    else:  # a first write takes SQLite's write lock for the whole transaction
        s.execute(
            update(NotificationIncident)
            .where(NotificationIncident.id == -1)
            .values(announcements=NotificationIncident.announcements)
        )


def apply_run(
    db: Database,
    pipeline: str,
    run_id: str,
    status: str,
    now: datetime,
    *,
    on_failure: bool = True,
    on_recovery: bool = True,
    reminder_interval: timedelta = REMINDER_INTERVAL,
) -> AppliedRun:
    """Decide what the end of ``run_id`` announces for its pipeline and store the new state
    of the pipeline's incident, atomically (see ``incidents.decide_run``)."""
    keys = _run_keys(pipeline)
    with db.session() as s:
        _serialise(s, db)
        row = s.scalars(
            select(NotificationIncident)
            .where(
                NotificationIncident.known_keys == keys, NotificationIncident.closed_at.is_(None)
            )
            .order_by(NotificationIncident.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        previous = _run_state(row) if row is not None else None
        decision = decide_run(
            previous,
            run_id,
            status,
            now,
            on_failure=on_failure,
            on_recovery=on_recovery,
            reminder_interval=reminder_interval,
        )
        closed = None
        if row is None and status == RUN_SUCCESS_STATUS and on_recovery:
            last = _closed_last(s, now - reminder_interval, NotificationIncident.known_keys == keys)
            closed = None if last is None else (last.id, _run_state(last))
        row = _store_run(s, row, keys, decision.incident, now)
        return AppliedRun(decision, row.id if row is not None else None, closed)


def _store_run(
    s: Session,
    row: NotificationIncident | None,
    keys: str,
    state: RunIncident | None,
    now: datetime,
) -> NotificationIncident | None:
    """Write ``state`` (None: no incident afterwards) into ``row`` (None: none was open)."""
    if state is None:
        if row is not None:  # recovery
            row.closed_at = now
            s.flush()
            _prune_run_incidents(s)
        return row
    if row is None:
        row = NotificationIncident(opened_at=state.opened_at, known_keys=keys)
        s.add(row)
    row.last_announced_at = state.last_announced_at
    row.failing_keys = _run_dump(state)
    row.announcements = state.announcements
    s.flush()
    return row


def _prune_run_incidents(s: Session) -> None:
    closed: ColumnElement[bool] = NotificationIncident.closed_at.is_not(None) & _IS_RUN
    cutoff = s.scalar(
        select(NotificationIncident.id)
        .where(closed)
        .order_by(NotificationIncident.id.desc())
        .offset(MAX_CLOSED_RUN_INCIDENTS)
        .limit(1)
    )
    if cutoff is not None:
        s.execute(delete(NotificationIncident).where(closed, NotificationIncident.id <= cutoff))


def open_run_incidents(db: Database) -> list[dict[str, Any]]:
    """Every open run incident, oldest first: pipeline, latest failed run and status, since
    (ISO 8601) and the number of failed runs."""
    with db.session() as s:
        rows = s.scalars(
            select(NotificationIncident)
            .where(NotificationIncident.closed_at.is_(None), _IS_RUN)
            .order_by(NotificationIncident.opened_at, NotificationIncident.id)
        ).all()
    out: list[dict[str, Any]] = []
    for row in rows:
        state = _run_state(row)
        out.append(
            {
                "pipeline": str(json.loads(row.known_keys)[0])[len(RUN_KEY_PREFIX) :],
                "run_id": state.last_run_id,
                "status": state.last_status,
                "since": state.opened_at.isoformat(),
                "failures": state.failures,
            }
        )
    return out


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


def undelivered(
    db: Database,
    incident_id: int,
    channels: Iterable[str],
    now: datetime,
    *,
    kind: str | None = None,
) -> list[str]:
    """The channels among ``channels`` whose newest message about incident
    ``incident_id`` (of ``kind``, when given) was not delivered: it failed, or was cut
    short (in progress for longer than ``ABANDONED_AFTER``). A channel that never sent
    anything about it (it was turned on later) is not among them."""
    out = []
    with db.session() as s:
        for channel in channels:
            row = s.scalars(
                select(NotificationDelivery)
                .where(
                    NotificationDelivery.channel == channel,
                    NotificationDelivery.incident_id == incident_id,
                )
                .order_by(NotificationDelivery.id.desc())
                .limit(1)
            ).first()
            if row is None or (kind is not None and row.kind != kind):
                continue
            if row.ok is False or (row.ok is None and now - row.created_at > ABANDONED_AFTER):
                out.append(channel)
    return out


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
