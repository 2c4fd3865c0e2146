"""The archive ledger (``archived_runs``): one row per run with verified objects in S3.
This module is the one owner of ``ArchivedRun``: every read and write goes through it.

Guarantees: a row is written only after its objects were verified, and before any local
file of the run is deleted; writes are idempotent upserts (two processes writing the
same row — e.g. a pass that lost its lock and its successor — never fail on a duplicate
key); a row never loses the keys of objects it recorded earlier.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    CursorResult,
    Select,
    Table,
    Uuid,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Update

from fastflow.archive.store import StoredObject
from fastflow.db.engine import Database
from fastflow.db.models import (
    CANCELLED_BEFORE_START,
    TRUNCATION_REASON,
    ArchivedRun,
    PipelineRun,
    utcnow,
)
from fastflow.runs import files as logfiles
from fastflow.runs.refs import RunRef

_WHICH = {logfiles.LOG_NAME: "log", logfiles.METRICS_NAME: "metrics"}


def get(db: Database, run_id: uuid.UUID) -> ArchivedRun | None:
    with db.session() as s:
        return s.get(ArchivedRun, run_id)


class RunFiles(NamedTuple):
    """The columns of a ``pipeline_runs`` row that reading its files back needs."""

    pipeline_name: str
    log_file: str | None
    metrics_file: str | None
    status: str | None = None
    failure_reason: str | None = None


# ``locate``: the wanted id as a one-row table, the run row and the ledger entry joined to
# it (either may be missing). Built once: the compiled statement is cached by SQLAlchemy.
_ENTRY_ATTRS = tuple((attr.key, attr.columns[0]) for attr in sa_inspect(ArchivedRun).column_attrs)
_WANTED = select(sql_cast(bindparam("run_id", type_=Uuid), Uuid).label("id")).subquery("wanted")
_LOCATE = (
    select(
        PipelineRun.id.label("row_id"),
        PipelineRun.pipeline_name.label("row_pipeline_name"),
        PipelineRun.log_file.label("row_log_file"),
        PipelineRun.metrics_file.label("row_metrics_file"),
        PipelineRun.status.label("row_status"),
        # only the one reason that tells a run without a log (the column is free text)
        case(
            (PipelineRun.failure_reason == CANCELLED_BEFORE_START, PipelineRun.failure_reason),
            else_=None,
        ).label("row_failure_reason"),
        *(column.label(f"entry_{key}") for key, column in _ENTRY_ATTRS),
    )
    .select_from(_WANTED)
    .outerjoin(PipelineRun, PipelineRun.id == _WANTED.c.id)
    .outerjoin(ArchivedRun, ArchivedRun.run_id == _WANTED.c.id)
)


def locate(db: Database, run_id: uuid.UUID) -> tuple[RunFiles | None, ArchivedRun | None]:
    """The run's file columns (None when its row is gone) and its ledger entry (None
    when it has none), read in one query with SQL Core — what reading a log back needs
    (``runs.readback``), without an ORM session, identity map or second round trip. The
    entry is a complete, detached ``ArchivedRun`` (every column), as ``get`` returns it.
    Nothing is cached: an entry can still change (a rebuild from a newer manifest
    replaces its objects), and a row can be deleted by another process at any moment."""
    with db.engine.connect() as conn:
        row = conn.execute(_LOCATE, {"run_id": run_id}).one()
    m = row._mapping
    run = (
        RunFiles(
            m["row_pipeline_name"],
            m["row_log_file"],
            m["row_metrics_file"],
            m["row_status"],
            m["row_failure_reason"],
        )
        if m["row_id"] is not None
        else None
    )
    entry = None
    if m["entry_run_id"] is not None:
        entry = ArchivedRun(**{key: m[f"entry_{key}"] for key, _ in _ENTRY_ATTRS})
    return run, entry


def pending(db: Database) -> list[ArchivedRun]:
    """Entries whose local deletion did not complete (a crash, a failure): the resume
    phase finishes them. Full logs archived before truncation are not pending: their
    run stays until retention removes it."""
    with db.session() as s:
        return list(
            s.scalars(
                select(ArchivedRun).where(
                    ArchivedRun.local_deleted_at.is_(None),
                    ArchivedRun.reason != TRUNCATION_REASON,
                )
            )
        )


def object_values(stored: dict[str, StoredObject], codec: str) -> dict[str, Any]:
    """Ledger columns describing verified objects (by local file name)."""
    values: dict[str, Any] = {}
    for name, obj in stored.items():
        which = _WHICH[name]
        values.update(
            {
                f"{which}_key": obj.key,
                f"{which}_size": obj.size,
                f"{which}_sha256": obj.sha256,
                f"{which}_original_size": obj.original_size,
                f"{which}_original_sha256": obj.original_sha256,
            }
        )
    if stored:
        values["encoding"] = codec if codec != "none" else None
    return values


def record(
    db: Database,
    run: RunRef,
    bucket: str,
    values: dict[str, Any],
    reason: str,
) -> None:
    """Upsert the run's entry with newly verified objects (``object_values``); the entry
    is pending local deletion again (``local_deleted_at`` cleared). New objects make the
    entry unlisted (``manifest_key`` cleared): the pass's manifest lists it again."""
    _upsert(db, run.id, _row(run, bucket, values, reason))


def _row(run: RunRef, bucket: str, values: dict[str, Any], reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "pipeline_name": run.pipeline_name,
        "status": run.status,
        "triggered_by": run.triggered_by,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "exit_code": run.exit_code,
        "bucket": bucket,
        "reason": reason,
        "archived_at": utcnow(),
        "local_deleted_at": None,
        **values,
    }
    if values:
        row["manifest_key"] = None
    return row


def record_many(db: Database, entries: list[tuple[RunRef, str, dict[str, Any], str]]) -> None:
    """``record`` for several runs ``(run, bucket, values, reason)`` in one transaction:
    one multi-row INSERT when none of them has an entry yet (the cleanup pass's case),
    else one upsert per run — committed together or not at all."""
    if not entries:
        return
    rows = []
    for run, bucket, values, reason in entries:
        row = _row(run, bucket, values, reason)
        row["run_id"] = run.id
        rows.append(row)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:  # one executemany per set of columns (a run without metrics, ...)
        groups.setdefault(tuple(sorted(row)), []).append(row)
    try:
        with db.session() as s:
            for group in groups.values():
                s.execute(insert(cast(Table, ArchivedRun.__table__)), group)
        return
    except IntegrityError:
        pass  # some run got an entry meanwhile: upsert each, still in one transaction
    with db.session() as s:
        for row in rows:
            run_id = row.pop("run_id")
            result = s.execute(
                update(ArchivedRun).where(ArchivedRun.run_id == run_id).values(**row)
            )
            if cast(CursorResult[Any], result).rowcount == 0:
                s.add(ArchivedRun(run_id=run_id, **row))


def mark_truncated(db: Database, run_id: uuid.UUID, at: datetime, size: int, sha: str) -> None:
    """The local log is now a truncated copy (``size``/``sha``) of the archived full log."""
    with db.session() as s:
        s.execute(
            update(ArchivedRun)
            .where(ArchivedRun.run_id == run_id)
            .values(log_truncated_at=at, local_log_size=size, local_log_sha256=sha)
        )


def _upsert(db: Database, run_id: uuid.UUID, values: dict[str, Any]) -> None:
    for attempt in range(3):
        try:
            with db.session() as s:
                result = s.execute(
                    update(ArchivedRun).where(ArchivedRun.run_id == run_id).values(**values)
                )
                if cast(CursorResult[Any], result).rowcount == 0:
                    s.add(ArchivedRun(run_id=run_id, **values))
            return
        except IntegrityError:
            if attempt == 2:
                raise  # pragma: no cover - a row that keeps appearing and vanishing


def mark_local_deleted_stmt(run_id: uuid.UUID | list[uuid.UUID], at: datetime) -> Update:
    """The statement that stamps ``local_deleted_at`` of one run or several — for the
    caller's own transaction (the run rows are deleted in the same commit)."""
    ids = run_id if isinstance(run_id, list) else [run_id]
    return (
        update(ArchivedRun)
        .where(ArchivedRun.run_id.in_(ids), ArchivedRun.local_deleted_at.is_(None))
        .values(local_deleted_at=at)
    )


def pending_ids() -> Select[Any]:
    """Subquery: run ids whose local files still wait for deletion."""
    return select(ArchivedRun.run_id).where(ArchivedRun.local_deleted_at.is_(None))


def _pages(db: Database, *where: Any, batch: int) -> Iterator[list[ArchivedRun]]:
    """Entries matching ``where``, in batches by run id (keyset pages: bounded memory for
    any ledger size; each page in its own short session)."""
    cursor = None
    while True:
        q = select(ArchivedRun).where(*where).order_by(ArchivedRun.run_id).limit(batch)
        if cursor is not None:
            q = q.where(ArchivedRun.run_id > cursor)
        with db.session() as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield rows
        cursor = rows[-1].run_id


def entries(
    db: Database, pipeline: str | None = None, since: datetime | None = None, batch: int = 500
) -> Iterator[list[ArchivedRun]]:
    """Every entry (optionally of one pipeline, archived since a time), in batches by
    run id (keyset pages: bounded memory for any ledger size)."""
    where = []
    if pipeline:
        where.append(ArchivedRun.pipeline_name == pipeline)
    if since:
        where.append(ArchivedRun.archived_at >= since)
    return _pages(db, *where, batch=batch)


def get_many(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, ArchivedRun]:
    if not ids:
        return {}
    with db.session() as s:
        rows = s.scalars(select(ArchivedRun).where(ArchivedRun.run_id.in_(ids)))
        return {r.run_id: r for r in rows}


def page(db: Database, pipeline: str | None, limit: int, offset: int) -> list[ArchivedRun]:
    """Entries newest first."""
    q = select(ArchivedRun)
    if pipeline:
        q = q.where(ArchivedRun.pipeline_name == pipeline)
    q = q.order_by(ArchivedRun.archived_at.desc(), ArchivedRun.run_id).limit(limit).offset(offset)
    with db.session() as s:
        return list(s.scalars(q))


def ids_between(
    db: Database, low: uuid.UUID, high: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, str, datetime]]:
    """``(run_id, pipeline_name, started_at)`` of up to ``limit`` entries whose run id
    lies in ``[low, high]`` (a short id's range), by run id."""
    q = (
        select(ArchivedRun.run_id, ArchivedRun.pipeline_name, ArchivedRun.started_at)
        .where(ArchivedRun.run_id >= low, ArchivedRun.run_id <= high)
        .order_by(ArchivedRun.run_id)
        .limit(limit)
    )
    with db.session() as s:
        return [(rid, name, started) for rid, name, started in s.execute(q).all()]


def rows_deleted(pipeline: str | None, status: str | None) -> Select[uuid.UUID, datetime, bool]:
    """Query of ``(id, started_at, row_deleted=True)`` for the entries whose
    ``pipeline_runs`` row is gone (deleted by retention), optionally of one pipeline and
    status — to merge with the runs (``runs.store.page_with_archived``)."""
    q = select(
        ArchivedRun.run_id.label("id"),
        ArchivedRun.started_at.label("started_at"),
        literal(True).label("row_deleted"),
    ).where(~exists().where(PipelineRun.id == ArchivedRun.run_id))
    if pipeline:
        q = q.where(ArchivedRun.pipeline_name == pipeline)
    if status:
        q = q.where(ArchivedRun.status == status.upper())
    return q


def count_archived(db: Database, ids: list[uuid.UUID]) -> int:
    """How many of ``ids`` have an entry."""
    total = 0
    with db.session() as s:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            total += (
                s.scalar(
                    select(func.count())
                    .select_from(ArchivedRun)
                    .where(ArchivedRun.run_id.in_(chunk))
                )
                or 0
            )
    return total


def totals(db: Database) -> tuple[int, int]:
    """(entries, bytes stored) for ``/metrics``."""
    with db.session() as s:
        n, logs, metrics = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(ArchivedRun.log_size), 0),
                func.coalesce(func.sum(ArchivedRun.metrics_size), 0),
            )
        ).one()
    return int(n), int(logs or 0) + int(metrics or 0)


def last_archived_at(db: Database) -> datetime | None:
    with db.session() as s:
        return s.scalar(select(func.max(ArchivedRun.archived_at)))


# --- integrity (issue 16): manifests and verification times ------------------------------

_HAS_OBJECT = ArchivedRun.log_key.is_not(None) | ArchivedRun.metrics_key.is_not(None)


def unlisted(db: Database, batch: int = 1000) -> Iterator[list[ArchivedRun]]:
    """Entries with objects that no manifest lists yet, in batches by run id (keyset)."""
    return _pages(db, ArchivedRun.manifest_key.is_(None), _HAS_OBJECT, batch=batch)


def mark_listed_stmt(manifest_key: str, run_ids: list[uuid.UUID]) -> Update:
    """The statement that names ``manifest_key`` on still unlisted entries of
    ``run_ids`` — for the caller's transaction (the manifest's row in the same commit)."""
    return (
        update(ArchivedRun)
        .where(ArchivedRun.run_id.in_(run_ids), ArchivedRun.manifest_key.is_(None))
        .values(manifest_key=manifest_key)
    )


def listed_objects(db: Database, manifest_key: str) -> int:
    """How many objects (logs plus metrics) the entries naming ``manifest_key`` have."""
    with db.session() as s:
        logs, metrics = s.execute(
            select(
                func.count(ArchivedRun.log_key),
                func.count(ArchivedRun.metrics_key),
            ).where(ArchivedRun.manifest_key == manifest_key)
        ).one()
    return int(logs or 0) + int(metrics or 0)


def entries_of_manifest(
    db: Database, manifest_key: str, batch: int = 1000
) -> Iterator[list[ArchivedRun]]:
    """The entries naming ``manifest_key``, in batches by run id (keyset)."""
    return _pages(db, ArchivedRun.manifest_key == manifest_key, batch=batch)


def listing_facts(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """For ``verify --manifests``: per run id, a row with ``manifest_key`` and the
    ``log_*``/``metrics_*`` key, size and SHA-256 (no full entries: cheaper)."""
    if not ids:
        return {}
    q = select(
        ArchivedRun.run_id,
        ArchivedRun.manifest_key,
        ArchivedRun.log_key,
        ArchivedRun.log_size,
        ArchivedRun.log_sha256,
        ArchivedRun.metrics_key,
        ArchivedRun.metrics_size,
        ArchivedRun.metrics_sha256,
    ).where(ArchivedRun.run_id.in_(ids))
    with db.session() as s:
        return {row.run_id: row for row in s.execute(q)}


def unlisted_count(db: Database) -> int:
    with db.session() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(ArchivedRun)
                .where(ArchivedRun.manifest_key.is_(None), _HAS_OBJECT)
            )
            or 0
        )


def manifest_keys_named(db: Database) -> Iterator[tuple[str, int]]:
    """``(manifest_key, entries)`` for every manifest some entry names."""
    with db.session() as s:
        rows = s.execute(
            select(ArchivedRun.manifest_key, func.count())
            .where(ArchivedRun.manifest_key.is_not(None))
            .group_by(ArchivedRun.manifest_key)
        ).all()
    for key, n in rows:
        yield str(key), int(n)


def mark_verified(db: Database, run_ids: list[uuid.UUID], at: datetime, *, deep: bool) -> None:
    """Stamp ``verified_at`` (and with ``deep`` also ``deep_verified_at``) on entries
    whose objects were all found intact."""
    values: dict[str, Any] = {"verified_at": at}
    if deep:
        values["deep_verified_at"] = at
    with db.session() as s:
        for i in range(0, len(run_ids), 500):
            s.execute(
                update(ArchivedRun)
                .where(ArchivedRun.run_id.in_(run_ids[i : i + 500]))
                .values(**values)
            )


def deep_sample(db: Database, objects: int) -> list[ArchivedRun]:
    """Entries whose objects were re-hashed longest ago (never first), holding about
    ``objects`` objects: each run of the scheduled verification re-hashes these, so every
    object is re-hashed over time."""
    if objects <= 0:
        return []
    never_first = ArchivedRun.deep_verified_at.is_not(None)
    q = (
        select(ArchivedRun)
        .where(_HAS_OBJECT)
        .order_by(never_first, ArchivedRun.deep_verified_at, ArchivedRun.run_id)
        .limit(objects)
    )
    out: list[ArchivedRun] = []
    n = 0
    with db.session() as s:
        for entry in s.scalars(q):
            if n >= objects:
                break
            out.append(entry)
            n += int(entry.log_key is not None) + int(entry.metrics_key is not None)
    return out


def verification_times(db: Database) -> tuple[int, int]:
    """(entries ever HEAD-verified, entries ever re-hashed)."""
    with db.session() as s:
        verified, deep = s.execute(
            select(func.count(ArchivedRun.verified_at), func.count(ArchivedRun.deep_verified_at))
        ).one()
    return int(verified or 0), int(deep or 0)


def upsert_rebuilt(
    db: Database, rows: list[dict[str, Any]], order: dict[str, int], replace: bool = False
) -> tuple[int, int, int, list[str]]:
    """Write entries rebuilt from manifests (``rebuild``): an entry is created when
    missing; an existing one gains the objects it lacks and otherwise keeps what it
    holds — a row that describes one of its objects differently is a conflict, reported
    and not applied. With ``replace`` a conflicting row is applied when it is newer
    (``archived_at``) or comes from the manifest the entry names. An entry names the
    latest manifest (by ``order``, the chain's order) that lists all its objects.
    Returns ``(created, updated, unchanged, conflicts)``. Each row holds the entry's
    columns plus the objects it lists (``log_*`` and/or ``metrics_*``) and
    ``manifest_key``."""
    updated = unchanged = 0
    conflicts: list[str] = []
    ids = [r["run_id"] for r in rows]
    fresh: dict[uuid.UUID, dict[str, Any]] = {}
    with db.session() as s:
        existing = {
            e.run_id: e for e in s.scalars(select(ArchivedRun).where(ArchivedRun.run_id.in_(ids)))
        }
        for row in rows:
            entry = existing.get(row["run_id"])
            if entry is None:
                # one run appears once per call: new entries go in one multi-row INSERT
                fresh[row["run_id"]] = {**_EMPTY_OBJECTS, **row}
                continue
            conflict = None if replace else _conflict(entry, row)
            if conflict is not None:
                conflicts.append(conflict)
            elif _merge_rebuilt(entry, row, order, replace):
                updated += 1
            else:
                unchanged += 1
        if fresh:
            s.execute(insert(ArchivedRun), list(fresh.values()))
    return len(fresh), updated, unchanged, conflicts


def _conflict(entry: ArchivedRun, row: dict[str, Any]) -> str | None:
    """How ``row`` — newer than the entry, or from the manifest the entry names, so that
    it would replace it — describes the run otherwise (None: it does not). An older
    record of another manifest is history, not a conflict."""
    if not (row["archived_at"] > entry.archived_at or entry.manifest_key == row["manifest_key"]):
        return None
    for which in ("log", "metrics"):
        have = getattr(entry, f"{which}_key"), getattr(entry, f"{which}_sha256")
        said = row.get(f"{which}_key"), row.get(f"{which}_sha256")
        if said[0] is not None and have[0] is not None and have != said:
            return (
                f"run {entry.run_id}: it lists the {which} as {said[0]} with SHA-256 "
                f"{said[1]}; the ledger records {have[0]} with SHA-256 {have[1]}"
            )
    for col in _FACTS[:-1]:  # archived_at: newer is what this compares
        if col in row and getattr(entry, col) != row[col]:
            held = getattr(entry, col)
            return f"run {entry.run_id}: it says {col} {row[col]!r}; the ledger {held!r}"
    return None


_OBJECT_COLUMNS = ("key", "size", "sha256", "original_size", "original_sha256")
_EMPTY_OBJECTS = {f"{w}_{c}": None for w in ("log", "metrics") for c in _OBJECT_COLUMNS}
# what a manifest line says of the run itself (``rebuild._rows``)
_FACTS = (
    "pipeline_name",
    "status",
    "triggered_by",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "encoding",
    "archived_at",
)


def _covers(entry: ArchivedRun, row: dict[str, Any]) -> bool:
    """True when ``row`` lists every object of ``entry``, as the entry records it."""
    for which in ("log", "metrics"):
        key = getattr(entry, f"{which}_key")
        if key is None:
            continue
        if (row.get(f"{which}_key"), row.get(f"{which}_sha256")) != (
            key,
            getattr(entry, f"{which}_sha256"),
        ):
            return False
    return True


def _merge_rebuilt(
    entry: ArchivedRun, row: dict[str, Any], order: dict[str, int], replace: bool
) -> bool:
    """Merge one rebuilt row into an existing entry; True when something changed. The
    entry gains the objects it lacks; only with ``replace`` does a newer row (or one from
    the manifest the entry names: an entry indexed from a damaged copy of it gets the
    original's values back) replace objects and facts. The entry names the row's
    manifest only when that manifest lists all its objects."""
    changed = False
    authority = replace and entry.manifest_key == row["manifest_key"]
    newer = replace and row["archived_at"] > entry.archived_at
    for which in ("log", "metrics"):
        key = row.get(f"{which}_key")
        if key is None:
            continue
        cols = [f"{which}_{c}" for c in _OBJECT_COLUMNS]
        if authority:
            same = all(getattr(entry, c) == row.get(c) for c in cols)
        else:
            same = (getattr(entry, f"{which}_key"), getattr(entry, f"{which}_sha256")) == (
                key,
                row.get(f"{which}_sha256"),
            )
        if same:
            continue
        if getattr(entry, f"{which}_key") is None or newer or authority:
            for col in cols:
                setattr(entry, col, row.get(col))
            changed = True
    if (changed and newer) or authority:
        for col in _FACTS:
            if col in row and getattr(entry, col) != row[col]:
                setattr(entry, col, row[col])
                changed = True
    covered = _covers(entry, row)
    mine = row["manifest_key"]
    later = entry.manifest_key is None or order.get(entry.manifest_key, -1) < order.get(mine, -1)
    if covered and entry.manifest_key != mine and (changed or later):
        entry.manifest_key = mine
        changed = True
    elif changed and not covered:
        entry.manifest_key = None  # the next pass lists the merged entry in a new manifest
    return changed
