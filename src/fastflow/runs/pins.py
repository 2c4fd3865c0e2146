"""Pinned runs: never deleted or truncated, locally or in the archive (issue 16).

A pin is three columns of the run's row — ``pinned_at``, ``pinned_by`` (who: a user, an
API token, the command line), ``pin_reason`` (why). Guarantees:

- pinning and unpinning change only those columns, in one statement; the cleanup
  executor re-checks the pin under the row's lock right before it deletes anything, so
  a run pinned after a pass planned its deletion is kept (a pin that arrives after the
  row was deleted lands on the run's ledger entry, below: the archive is written before
  any row is deleted);
- with ``S3_OBJECT_LOCK_LEGAL_HOLD=true`` (and S3 backup enabled) pinning places an
  Object Lock legal hold on each of the run's archived objects (log, metrics, webhook
  payload) and unpinning lifts it; a failure there never undoes the pin and is
  reported in ``HoldResult.error`` (one line, no secrets);
- a run whose row retention deleted (it lives only in the archive) is pinned on its
  ledger entry, with the same columns: its archived objects get the legal hold, and it
  shows as pinned wherever archived runs are shown. fastflow never deletes archived
  objects itself; the hold is what keeps a bucket's lifecycle rule or a person from it.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import CursorResult, select, update

from fastflow.archive import ledger
from fastflow.config import Settings
from fastflow.db import cache as readcache
from fastflow.db.engine import Database
from fastflow.db.models import ArchivedRun, PipelineRun, utcnow
from fastflow.errors import FastflowError, InvalidInput, RunNotFound

MAX_REASON_CHARS = 1000
MAX_BY_CHARS = 255
PAYLOAD = "payload.json"


@dataclass
class HoldResult:
    """What pinning or unpinning did to the archived objects' legal holds.

    ``enabled``: legal holds are configured (``S3_OBJECT_LOCK_LEGAL_HOLD`` with S3 backup
    enabled); ``objects``: the keys whose hold was set (``on``) or lifted; ``error``: why
    some hold could not be changed (the pin itself stands)."""

    enabled: bool = False
    on: bool = True
    objects: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class PinState:
    """A run's pin after ``pin``/``unpin``; the ``*_at`` time in ISO 8601."""

    run_id: str
    pinned: bool
    pinned_at: str | None
    pinned_by: str | None
    pin_reason: str | None
    changed: bool  # False: it already was (``pin``: replaced reason) / was not pinned
    legal_hold: HoldResult

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_reason(raw: str) -> str:
    """The reason as stored: one line, trimmed; ``InvalidInput`` when empty, too long,
    or holding control, bidi or unencodable characters (NUL, ``\u202e``, a lone
    surrogate: what a listing or a terminal would show wrongly, or a database refuse)."""
    text = " ".join(str(raw).split())
    if any(
        ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 or c in _BIDI
        for c in text
    ):
        raise InvalidInput("the pin reason must be printable text on one line")
    if not text:
        raise InvalidInput('a pin needs a reason (--reason TEXT / {"reason": "..."})')
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"the pin reason is longer than {MAX_REASON_CHARS} characters")
    return text


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def holds_enabled(settings: Settings) -> bool:
    return settings.s3_backup_enabled and settings.s3_object_lock_legal_hold


def pinned(db: Database, run_id: uuid.UUID) -> bool:
    """True when the run's row exists and is pinned (one primary-key read)."""
    with db.session() as s:
        at = s.scalar(select(PipelineRun.pinned_at).where(PipelineRun.id == run_id))
    return at is not None


def pinned_among(db: Database, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``run_ids`` are pinned (one query)."""
    if not run_ids:
        return set()
    with db.session() as s:
        return set(
            s.scalars(
                select(PipelineRun.id).where(
                    PipelineRun.id.in_(run_ids), PipelineRun.pinned_at.is_not(None)
                )
            )
        )


def pin(db: Database, settings: Settings, run_id: uuid.UUID, reason: str, by: str) -> PinState:
    """Pin the run (again: the reason, who and when are replaced), then place legal holds
    on its archived objects when configured."""
    text = clean_reason(reason)
    now = utcnow()
    values = {"pinned_at": now, "pinned_by": by[:MAX_BY_CHARS], "pin_reason": text}
    with db.session() as s:
        was = s.scalar(select(PipelineRun.pinned_at).where(PipelineRun.id == run_id))
        row_update = update(PipelineRun).where(PipelineRun.id == run_id).values(values)
        found = _rowcount(s.execute(row_update))
    if not found:  # only in the archive: pinned on its ledger entry
        with db.session() as s:
            was = s.scalar(select(ArchivedRun.pinned_at).where(ArchivedRun.run_id == run_id))
            where = ArchivedRun.run_id == run_id
            if not _rowcount(s.execute(update(ArchivedRun).where(where).values(values))):
                raise RunNotFound(f"run {run_id} not found")
    readcache.invalidate()
    holds = set_holds(db, settings, run_id, on=True)
    return PinState(str(run_id), True, now.isoformat(), by[:MAX_BY_CHARS], text, was is None, holds)


def unpin(db: Database, settings: Settings, run_id: uuid.UUID) -> PinState:
    """Remove the pin (nothing to do when there is none) and lift the legal holds on the
    run's archived objects when configured (also when it was not pinned: a retry after a
    failed lift)."""
    cleared = {"pinned_at": None, "pinned_by": None, "pin_reason": None}
    with db.session() as s:
        row = s.execute(select(PipelineRun.pinned_at).where(PipelineRun.id == run_id)).first()
        if row is None:  # only in the archive: the pin is on its ledger entry
            row = s.execute(
                select(ArchivedRun.pinned_at).where(ArchivedRun.run_id == run_id)
            ).first()
            if row is None:
                raise RunNotFound(f"run {run_id} not found")
            if row[0] is not None:
                s.execute(update(ArchivedRun).where(ArchivedRun.run_id == run_id).values(cleared))
        elif row[0] is not None:
            s.execute(update(PipelineRun).where(PipelineRun.id == run_id).values(cleared))
    readcache.invalidate()
    holds = set_holds(db, settings, run_id, on=False)
    changed = row[0] is not None
    return PinState(str(run_id), False, None, None, None, changed, holds)


def set_holds(db: Database, settings: Settings, run_id: uuid.UUID, *, on: bool) -> HoldResult:
    """Place (``on``) or lift the legal hold on every archived object of the run: the
    ledger's log and metrics keys and a webhook payload next to them. Never raises: a
    problem is returned in ``error``."""
    result = HoldResult(enabled=holds_enabled(settings), on=on)
    if not result.enabled:
        return result
    entry = ledger.get(db, run_id)
    if entry is None:
        return result  # nothing archived yet: the executor holds objects archived later
    try:
        from fastflow.archive import s3 as archive  # boto3: only when holds are set

        store = archive.open_store(settings)
        keys = [k for k in (entry.log_key, entry.metrics_key) if k]
        payload = store.key_for(entry.pipeline_name, str(run_id), PAYLOAD)
        if store.head(payload) is not None:
            keys.append(payload)
        for key in keys:
            store.set_legal_hold(key, on)
            result.objects.append(key)
    except FastflowError as e:
        result.error = str(e)
    return result


def describe(state: PinState) -> str:
    """One line for the command line."""
    if state.pinned:
        verb = "pinned" if state.changed else "pinned again (reason replaced)"
        text = f"run {state.run_id} {verb} by {state.pinned_by}: {state.pin_reason}"
    else:
        text = f"run {state.run_id} " + ("unpinned" if state.changed else "was not pinned")
    hold = state.legal_hold
    if hold.enabled and hold.objects:
        text += (
            f"; legal hold {'placed on' if hold.on else 'lifted from'} "
            f"{len(hold.objects)} archived object(s)"
        )
    return text


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
