"""Find cleanup candidates in SQL, in batches, with bounded memory.

Per pipeline: one index-backed query for the count boundary (the oldest of the newest
``keep_runs`` finished runs, ``ORDER BY started_at DESC OFFSET keep-1``), two for what the
keep rules protect (the newest SUCCESS run; the oldest of the newest ``keep_failed``
failed runs), and keyset pages over ``(pipeline_name, started_at, id)`` for the runs
older than the boundary or the age cut-off. Active runs (PENDING, RUNNING) are excluded
in every query; pinned runs and runs kept by a rule are excluded from the deletion and
truncation candidates in SQL (and again by the pure ``policy.decide``), and listed by
``kept_candidates`` for the dry run and ``/metrics``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, and_, func, not_, or_, select, tuple_
from sqlalchemy.sql.elements import ColumnElement

from fastflow.db.engine import Database
from fastflow.db.models import ACTIVE_STATUSES, PipelineRun, RunStatus
from fastflow.errors import UnsafePath
from fastflow.lifecycle.policy import (
    FAILED_STATUSES,
    Action,
    ActionKind,
    Boundary,
    Keeps,
    Policy,
    RunRef,
    age_cutoff,
    decider,
)
from fastflow.runs import files as logfiles

BATCH_SIZE = 5000

# the pipeline's name is not read: every query is of one pipeline
_COLUMNS = (
    PipelineRun.id,
    PipelineRun.status,
    PipelineRun.triggered_by,
    PipelineRun.started_at,
    PipelineRun.finished_at,
    PipelineRun.exit_code,
    PipelineRun.log_file,
    PipelineRun.metrics_file,
    PipelineRun.log_size,
)
# last, not part of ``RunRef``: a flag, so that no timestamp is converted per row
_PINNED = PipelineRun.pinned_at.is_not(None).label("pinned")

Row = tuple[RunRef, bool]  # the run and whether it is pinned


def _utc(value: Any) -> datetime | None:
    """A stored timestamp as the driver returns it (naive UTC: text on SQLite, a datetime
    on PostgreSQL), made aware — what ``models.UTCDateTime`` returns."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: "2026-12-01 10:00:00.000000", naive UTC
        # (also text written by something else: "...T10:00:00Z", "...+02:00")
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _uid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


_UUID = uuid.UUID
_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def _uid_hex(value: str) -> uuid.UUID:
    """``uuid.UUID(value)`` for the 32 hex digits SQLite stores, half the cost: the
    instance is built from its integer as ``UUID.__init__`` ends up doing (its slots
    ``int`` and ``is_safe``), without the parsing of other spellings. Anything else
    goes through ``uuid.UUID``."""
    if len(value) != 32 or value[0] == "-":  # (``int`` would take a sign)
        return _UUID(value)
    u = _new_object(_UUID)
    _set_slot(u, "int", int(value, 16))
    _set_slot(u, "is_safe", _UNKNOWN)
    return u


# ``datetime(state, tzinfo)``: the constructor's pickle form (``datetime.__reduce__``)
_from_state: Callable[[Any, Any], datetime] = cast(Any, datetime)


def _aware(naive: datetime) -> datetime:
    """``naive.replace(tzinfo=UTC)``, a quarter of the cost (``replace`` parses keyword
    arguments): the value rebuilt from its pickle state with ``UTC``, which is what
    unpickling an aware datetime does."""
    state: Any = naive.__reduce_ex__(4)[1]  # protocol 4: ``fold`` kept
    return _from_state(state[0], UTC)


def _refs(raw: Sequence[Any], pipeline: str) -> list[RunRef]:
    """``RunRef``s from driver rows of ``_COLUMNS`` — what SQLAlchemy's result processing
    and ``models.UTCDateTime`` would return, converted in one tight loop per page (the
    planner's cost is per row: 200,000 rows are 200,000 of these)."""
    if not raw:
        return []
    new, ref = tuple.__new__, RunRef
    first = raw[0]
    if isinstance(first[0], str) and isinstance(first[3], str):
        # SQLite: ids as hex text, timestamps as naive-UTC text as fastflow writes them
        uid, iso = _uid_hex, datetime.fromisoformat
        try:
            return [
                new(
                    ref,
                    (
                        uid(r[0]),
                        pipeline,
                        r[1],
                        r[2],
                        iso(r[3] + "+00:00"),
                        None if r[4] is None else iso(r[4] + "+00:00"),
                        r[5],
                        r[6],
                        r[7],
                        r[8],
                    ),
                )
                for r in raw
            ]
        except ValueError:
            pass  # a timestamp written by something else ("Z", an offset): the slow path
    if isinstance(first[0], uuid.UUID) and isinstance(first[3], datetime) and not first[3].tzinfo:
        # PostgreSQL: UUID and naive-UTC datetime objects (``timestamp without time zone``
        # columns: every row is naive)
        aware = _aware
        return [
            new(
                ref,
                (
                    r[0],
                    pipeline,
                    r[1],
                    r[2],
                    aware(r[3]),
                    None if r[4] is None else aware(r[4]),
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                ),
            )
            for r in raw
        ]
    # any other driver: each value converted on its own (e.g. text ids with datetimes)
    utc = _utc
    return [
        new(ref, (_uid(r[0]), pipeline, r[1], r[2], utc(r[3]), utc(r[4]), *r[5:9])) for r in raw
    ]


def _key_tuple(key: Boundary) -> Any:
    """A (started_at, id) literal typed like the columns, so that timestamps bind as naive
    UTC whatever the database session's time zone."""
    return tuple_(*key, types=[PipelineRun.started_at.type, PipelineRun.id.type])


def _run_key() -> Any:
    return tuple_(PipelineRun.started_at, PipelineRun.id)


@contextmanager
def _reading(db: Database) -> Iterator[Connection]:
    """A connection for the planner's reads. On PostgreSQL in autocommit: each read is
    one round trip, without BEGIN and ROLLBACK around it (every read was its own
    transaction before too, so each still sees what was committed when it ran)."""
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def pipeline_names(db: Database) -> list[str]:
    """Every pipeline that has runs (an index scan)."""
    with _reading(db) as conn:
        return list(conn.scalars(select(PipelineRun.pipeline_name).distinct()))


def _finished(pipeline: str) -> list[ColumnElement[bool]]:
    return [PipelineRun.pipeline_name == pipeline, PipelineRun.status.not_in(ACTIVE_STATUSES)]


def count_boundary(db: Database, pipeline: str, keep: int | None) -> Boundary | None:
    """(started_at, id) of the oldest run that the count rule keeps, or None."""
    if keep is None:
        return None
    q = (
        select(PipelineRun.started_at, PipelineRun.id)
        .where(*_finished(pipeline))
        .order_by(PipelineRun.started_at.desc(), PipelineRun.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    with _reading(db) as conn:
        row = conn.execute(q).first()
    return (row[0], row[1]) if row else None


def keeps_for(db: Database, pipeline: str, policy: Policy) -> Keeps:
    """What the keep rules protect in ``pipeline`` (two small index-ordered queries)."""
    last: Boundary | None = None
    failed: Boundary | None = None
    with _reading(db) as conn:
        if policy.keep_last_success:
            row = conn.execute(
                select(PipelineRun.started_at, PipelineRun.id)
                .where(
                    PipelineRun.pipeline_name == pipeline,
                    PipelineRun.status == RunStatus.SUCCESS.value,
                )
                .order_by(PipelineRun.started_at.desc(), PipelineRun.id.desc())
                .limit(1)
            ).first()
            last = (row[0], row[1]) if row else None
        if policy.keep_failed:
            newest = (
                select(PipelineRun.started_at, PipelineRun.id)
                .where(
                    PipelineRun.pipeline_name == pipeline,
                    PipelineRun.status.in_(FAILED_STATUSES),
                )
                .order_by(PipelineRun.started_at.desc(), PipelineRun.id.desc())
                .limit(policy.keep_failed)
                .subquery()
            )
            row = conn.execute(
                select(newest.c.started_at, newest.c.id)
                .order_by(newest.c.started_at, newest.c.id)
                .limit(1)
            ).first()
            failed = (row[0], row[1]) if row else None
    return Keeps(last_success=last, failed_from=failed)


@dataclass(frozen=True)
class Bounds:
    """Everything the pure decision needs about one pipeline besides the run itself."""

    boundary: Boundary | None
    cutoff: datetime | None
    keeps: Keeps

    def due(self) -> list[ColumnElement[bool]]:
        """Conditions of which any makes a finished run due for deletion (empty: none)."""
        conds: list[ColumnElement[bool]] = []
        if self.boundary is not None:
            conds.append(_run_key() < _key_tuple(self.boundary))
        if self.cutoff is not None:
            conds.append(PipelineRun.started_at < self.cutoff)
        return conds

    def kept_by_rule(self, policy: Policy) -> ColumnElement[bool] | None:
        """The runs ``keep_last_success`` and ``keep_failed`` protect (None: none)."""
        conds: list[ColumnElement[bool]] = []
        if policy.keep_last_success and self.keeps.last_success is not None:
            conds.append(PipelineRun.id == self.keeps.last_success[1])
        if policy.keep_failed and self.keeps.failed_from is not None:
            conds.append(
                and_(
                    PipelineRun.status.in_(FAILED_STATUSES),
                    _run_key() >= _key_tuple(self.keeps.failed_from),
                )
            )
        return or_(*conds) if conds else None


def bounds(db: Database, pipeline: str, policy: Policy, now: datetime) -> Bounds:
    return Bounds(
        boundary=count_boundary(db, pipeline, policy.keep_runs),
        cutoff=age_cutoff(policy, now),
        keeps=keeps_for(db, pipeline, policy),
    )


def _pages(
    db: Database, base: Any, batch: int, pipeline: str, pins: bool
) -> Iterator[tuple[list[RunRef], list[bool] | None]]:
    """Keyset pages of ``base`` (which selects ``_COLUMNS``, then ``_PINNED`` if
    ``pins``): the runs, and their pinned flags (None without ``pins``)."""
    cursor: Boundary | None = None
    while True:
        q = base
        if cursor is not None:
            q = q.where(_run_key() > _key_tuple(cursor))
        q = q.order_by(PipelineRun.started_at, PipelineRun.id).limit(batch)
        with _reading(db) as conn:
            # the driver's own tuples, converted by ``_refs``: SQLAlchemy's per-row result
            # processing (rows, type decorators) cost more than all the rest of planning
            raw = conn.execute(q).cursor.fetchall()
        refs = _refs(raw, pipeline)
        if not refs:
            return
        yield refs, ([bool(r[-1]) for r in raw] if pins else None)
        cursor = refs[-1].key
        if len(refs) < batch:
            return


def _due_where(pipeline: str, policy: Policy, b: Bounds) -> list[ColumnElement[bool]] | None:
    """The SQL twin of ``decide`` returning ``archive_and_delete_run`` (None: nothing)."""
    due = b.due()
    if not due:
        return None
    where = [*_finished(pipeline), or_(*due), PipelineRun.pinned_at.is_(None)]
    kept = b.kept_by_rule(policy)
    if kept is not None:
        where.append(not_(kept))
    return where


def deletion_candidates(
    db: Database, pipeline: str, policy: Policy, now: datetime, batch: int = BATCH_SIZE
) -> Iterator[list[Action]]:
    """Batches of ``archive_and_delete_run`` actions for one pipeline, oldest first
    (pinned runs and runs kept by a rule are not candidates)."""
    b = bounds(db, pipeline, policy, now)
    where = _due_where(pipeline, policy, b)
    if where is None:
        return
    # pinned runs are excluded in SQL: every row's pinned flag is False
    base = select(*_COLUMNS).where(*where)
    one = decider(policy, now, b.boundary, b.keeps, cutoff=b.cutoff)
    delete = ActionKind.ARCHIVE_AND_DELETE_RUN
    for refs, _ in _pages(db, base, batch, pipeline, pins=False):
        actions = [a for ref in refs if (a := one(ref, False)) is not None and a.kind is delete]
        if actions:
            yield actions


def due_totals(db: Database, pipeline: str, policy: Policy, now: datetime) -> tuple[int, int]:
    """(runs, recorded log bytes) of the deletion candidates, counted in SQL: what waits
    for the next pass to archive and delete it."""
    where = _due_where(pipeline, policy, bounds(db, pipeline, policy, now))
    if where is None:
        return 0, 0
    q = select(func.count(), func.coalesce(func.sum(PipelineRun.log_size), 0)).where(*where)
    with _reading(db) as conn:
        row = conn.execute(q).one()
    return int(row[0]), int(row[1] or 0)


def truncation_candidates(
    db: Database,
    pipeline: str,
    policy: Policy,
    now: datetime,
    logs_root: Path,
    batch: int = BATCH_SIZE,
    size_of: Callable[[Path], int | None] = logfiles.size_of,
) -> Iterator[list[Action]]:
    """Batches of ``truncate_log`` actions: finished runs kept by retention (or by a keep
    rule) whose log is larger than the limit; never a pinned run. Runs without a recorded
    size are measured on disk."""
    if policy.max_log_bytes is None:
        return
    b = bounds(db, pipeline, policy, now)
    oversized: list[ColumnElement[bool]] = [
        *_finished(pipeline),
        PipelineRun.pinned_at.is_(None),
        PipelineRun.log_file.is_not(None),
        or_(PipelineRun.log_size > policy.max_log_bytes, PipelineRun.log_size.is_(None)),
    ]
    kept_range: list[ColumnElement[bool]] = []
    if b.boundary is not None:
        kept_range.append(_run_key() >= _key_tuple(b.boundary))
    if b.cutoff is not None:
        kept_range.append(PipelineRun.started_at >= b.cutoff)
    # pinned runs are excluded in SQL: every row's pinned flag is False
    bases = [select(*_COLUMNS).where(*oversized, *kept_range)]
    kept = b.kept_by_rule(policy)
    if kept is not None and b.due():  # kept from deletion by a rule: still size-bounded
        bases.append(select(*_COLUMNS).where(*oversized, or_(*b.due()), kept))
    one = decider(policy, now, b.boundary, b.keeps, cutoff=b.cutoff)
    for base in bases:
        for refs, _ in _pages(db, base, batch, pipeline, pins=False):
            actions = []
            for ref in refs:
                if ref.log_size is None and ref.log_file:
                    try:
                        size = size_of(logfiles.resolve(logs_root, ref.log_file))
                    except UnsafePath:
                        size = None
                    ref = ref._replace(log_size=size)
                action = one(ref, False)
                if action is not None and action.kind is ActionKind.TRUNCATE_LOG:
                    actions.append(action)
            if actions:
                yield actions


def kept_candidates(
    db: Database, pipeline: str, policy: Policy, now: datetime, batch: int = BATCH_SIZE
) -> Iterator[list[Action]]:
    """Batches of ``keep`` entries, oldest first: runs that count or age retention would
    delete but a pin or a keep rule keeps, and pinned runs spared truncation. Each has
    one reason: ``pinned``, ``last_success`` or ``keep_failed``."""
    b = bounds(db, pipeline, policy, now)
    pinned = PipelineRun.pinned_at.is_not(None)
    wanted: list[ColumnElement[bool]] = []
    due = b.due()
    if due:
        kept = b.kept_by_rule(policy)
        wanted.append(and_(or_(*due), or_(pinned, kept) if kept is not None else pinned))
    if policy.max_log_bytes is not None:
        wanted.append(
            and_(
                pinned,
                PipelineRun.log_file.is_not(None),
                PipelineRun.log_size > policy.max_log_bytes,
            )
        )
    if not wanted:
        return
    base = select(*_COLUMNS, _PINNED).where(*_finished(pipeline), or_(*wanted))
    one = decider(policy, now, b.boundary, b.keeps, cutoff=b.cutoff)
    for refs, pins in _pages(db, base, batch, pipeline, pins=True):
        assert pins is not None
        actions = [
            a
            for ref, is_pinned in zip(refs, pins, strict=True)
            if (a := one(ref, is_pinned)) is not None and a.kind is ActionKind.KEEP
        ]
        if actions:
            yield actions


def kept_counts(db: Database, pipeline: str, policy: Policy, now: datetime) -> Counter[str]:
    """The number of ``kept_candidates`` of ``pipeline`` by reason."""
    counts: Counter[str] = Counter()
    for batch in kept_candidates(db, pipeline, policy, now):
        counts.update(action.reasons[0] for action in batch)
    return counts
