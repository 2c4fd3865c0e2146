"""Figures of the overview dashboard and the pipeline pages, from indexed aggregates.

No query here reads the whole ``pipeline_runs`` table (but the base sum of
``local_log_bytes``, kept in memory between cleanup passes):

- runs per UTC day and final status: one ``COUNT(*)`` per (day, status) range of the
  index ``(status, started_at)`` (an index-only count, no date function per row);
- the runs of one pipeline in a window: the covering index ``(pipeline_name,
  started_at, status, finished_at)``; its last runs: a reverse range of it;
- the retention backlog: the conditions of ``lifecycle.selection.due_totals`` (count and
  age rules, pins, keep rules) for all pipelines in two statements;
- the local log bytes: ranges of the partial index ``(finished_at, log_size)``.

Also the owner of ``DiskSample``: the local log bytes, free space and archived bytes
recorded after each cleanup pass (``record_disk_sample``), which the disk chart draws.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Select,
    String,
    bindparam,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    type_coerce,
    union_all,
)

from fastflow.archive import ledger
from fastflow.db.engine import Database
from fastflow.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    DiskSample,
    PipelineRun,
    RunStatus,
    utcnow,
)
from fastflow.runs import store

MAX_DAYS = 366
RECENT_RUNS = 50
MAX_DISK_SAMPLES = 1000
ALL_STATUSES = tuple(s.value for s in RunStatus)


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_range(day: date) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day ``day``."""
    start = day_start(day)
    return start, start + timedelta(days=1)


# --- runs per day ---------------------------------------------------------------------


def _counts_by_day(db: Database, first: date, days: int) -> dict[int, dict[str, int]]:
    """{day offset from ``first``: {final status: runs started that UTC day}} (only the
    non-zero cells), in one statement of one index range per day and status."""
    parts: list[Select[int, str, int]] = []
    for k in range(days):
        start, end = day_range(first + timedelta(days=k))
        parts.append(
            select(literal(k).label("k"), PipelineRun.status, func.count().label("n"))
            .where(
                PipelineRun.status.in_(FINAL_STATUSES),
                PipelineRun.started_at >= start,
                PipelineRun.started_at < end,
            )
            .group_by(PipelineRun.status)
        )
    out: dict[int, dict[str, int]] = {}
    with db.engine.connect() as conn:
        for k, status, n in conn.execute(union_all(*parts)):
            out.setdefault(int(k), {})[str(status)] = int(n)
    return out


def runs_by_day(db: Database, days: int, now: datetime) -> list[dict[str, Any]]:
    """Every UTC day of the ``days`` days that end with today, oldest first, each with
    the number of runs started that day per final status (zeros included):
    ``{"day": "YYYY-MM-DD", "SUCCESS": n, "FAILED": n, "TIMEOUT": n, "CANCELLED": n}``.
    Active runs (queued, pending, running) are not counted."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    counts = _counts_by_day(db, first, days)
    out = []
    for k in range(days):
        cell = counts.get(k, {})
        row: dict[str, Any] = {"day": (first + timedelta(days=k)).isoformat()}
        row.update({s: cell.get(s, 0) for s in FINAL_STATUSES})
        out.append(row)
    return out


def success_rate(rows: Sequence[dict[str, Any]]) -> float | None:
    """SUCCESS / all finished runs (SUCCESS, FAILED, TIMEOUT, CANCELLED) of ``rows``
    (``runs_by_day`` entries); None without finished runs."""
    finished = sum(int(r[s]) for r in rows for s in FINAL_STATUSES)
    ok = sum(int(r["SUCCESS"]) for r in rows)
    return ok / finished if finished else None


def status_counts_since(db: Database, since: datetime) -> dict[str, int]:
    """{status: runs started at or after ``since``} for every status (zeros included)."""
    q = (
        select(PipelineRun.status, func.count())
        .where(PipelineRun.status.in_(ALL_STATUSES), PipelineRun.started_at >= since)
        .group_by(PipelineRun.status)
    )
    with db.engine.connect() as conn:
        found = {str(status): int(n) for status, n in conn.execute(q)}
    return {s: found.get(s, 0) for s in ALL_STATUSES}


# --- one pipeline ---------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ascending ``sorted_values`` with linear
    interpolation between the closest ranks (as ``numpy.percentile``), not rounded: the
    durations are the runs' ``duration_s`` (milliseconds); None if empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    value = sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)
    return value


def _stored(value: datetime | str) -> datetime:
    """A timestamp as the database returns it without the column type: a datetime
    (PostgreSQL) or ISO 8601 text (SQLite), naive UTC either way."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _seconds(started: datetime, finished: datetime | None) -> float | None:
    return None if finished is None else round((finished - started).total_seconds(), 3)


def has_runs(db: Database, pipeline: str) -> bool:
    """True when ``pipeline`` has at least one run row."""
    q = select(PipelineRun.id).where(PipelineRun.pipeline_name == pipeline).limit(1)
    with db.engine.connect() as conn:
        return conn.execute(q).first() is not None


def recent_runs(db: Database, pipeline: str, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of ``pipeline``, newest first (``started_at``, then id, as
    the Runs list): ``run_id``, ``status``, ``duration_s`` (None while active),
    ``started_at`` (ISO 8601 UTC) and ``attempt``."""
    q = (
        select(
            PipelineRun.id,
            PipelineRun.status,
            PipelineRun.started_at,
            PipelineRun.finished_at,
            PipelineRun.attempt,
        )
        .where(PipelineRun.pipeline_name == pipeline)
        .order_by(PipelineRun.started_at.desc(), PipelineRun.id)
        .limit(limit)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(q).all()
    return [
        {
            "run_id": str(rid),
            "status": status,
            "duration_s": _seconds(started, finished) if status in FINAL_STATUSES else None,
            "started_at": started.isoformat(),
            "attempt": attempt or 1,
        }
        for rid, status, started, finished, attempt in rows
    ]


def pipeline_stats(db: Database, pipeline: str, days: int, now: datetime) -> dict[str, Any]:
    """One pipeline over the last ``days`` days (runs that started since ``now - days``;
    every attempt of a retried run counts as a run): ``runs`` (any status),
    ``success_rate`` (SUCCESS / finished runs, None without finished runs),
    ``duration_p50_s`` and ``duration_p95_s`` (of the finished runs, linear
    interpolation; None without), and ``recent``: its last 50 runs, newest first, whatever
    their age."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}")
    # the timestamps as stored (naive UTC): a difference needs no time zone, and a
    # window of 10,000s of runs would spend most of its time in the column type's parsing
    q = select(
        PipelineRun.status,
        type_coerce(PipelineRun.started_at, String),
        type_coerce(PipelineRun.finished_at, String),
    ).where(
        PipelineRun.pipeline_name == pipeline,
        PipelineRun.started_at >= now - timedelta(days=days),
    )
    runs = finished_runs = ok = 0
    durations: list[float] = []
    with db.engine.connect() as conn:
        for status, started, finished in conn.execute(q):
            runs += 1
            if status not in FINAL_STATUSES:
                continue
            finished_runs += 1
            ok += status == RunStatus.SUCCESS.value
            if finished is not None:
                durations.append(_seconds(_stored(started), _stored(finished)) or 0.0)
    durations.sort()
    return {
        "runs": runs,
        "success_rate": ok / finished_runs if finished_runs else None,
        "duration_p50_s": percentile(durations, 0.50),
        "duration_p95_s": percentile(durations, 0.95),
        "recent": recent_runs(db, pipeline),
    }


# --- the retention backlog ------------------------------------------------------------


_NAMES = text(
    "WITH RECURSIVE names(name) AS ("
    " SELECT min(pipeline_name) FROM pipeline_runs"
    " UNION ALL"
    " SELECT (SELECT min(p.pipeline_name) FROM pipeline_runs p WHERE p.pipeline_name > n.name)"
    " FROM names n WHERE n.name IS NOT NULL"
    ") SELECT name FROM names WHERE name IS NOT NULL"
)


def pipeline_names(db: Database) -> list[str]:
    """Every pipeline that has runs, ascending, in one statement that skips through the
    ``(pipeline_name, ...)`` index one name at a time (a plain DISTINCT reads every index
    entry on PostgreSQL)."""
    with db.engine.connect() as conn:
        return [str(name) for (name,) in conn.execute(_NAMES)]


@dataclass(frozen=True)
class Backlog:
    runs: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class RetentionRule:
    """The deletion rules of one pipeline (``lifecycle.policy.Policy``, with the age
    cut-off worked out): keep the newest ``keep_runs`` finished runs; delete runs started
    before ``cutoff`` (None: no such rule); but keep pinned runs, the newest SUCCESS run
    (``keep_last_success``) and the newest ``keep_failed`` runs whose status is in
    ``failed_statuses``."""

    pipeline: str
    keep_runs: int | None
    cutoff: datetime | None
    keep_last_success: bool = False
    keep_failed: int = 0
    failed_statuses: tuple[str, ...] = ()


# The backlog is counted in hand-written SQL (the same text on SQLite and PostgreSQL): a
# statement per pipeline built with the expression language costs more to build than to
# run. Values are bound; the status lists are fastflow's own constants, checked here.
_STATUS_RE = re.compile(r"[A-Z]+")
_CHUNK = 400  # SQLite allows 500 terms per compound select
Key = tuple[datetime, Any]  # (started_at, id) of a run: the planner's order


def _statuses(values: Sequence[str]) -> str:
    assert values and all(_STATUS_RE.fullmatch(v) for v in values), values
    return ", ".join(f"'{v}'" for v in values)


_ACTIVE = _statuses(ACTIVE_STATUSES)


_MARKS_PER_STATEMENT = 300  # each a term of the compound select: under SQLite's 500
KEPT_IDS_MAX = 500  # newest failed runs kept per pipeline beyond which SQL checks each run


def _mark_terms(rule: RetentionRule, i: int, params: dict[str, Any]) -> list[str]:
    """The queries of what the planner looks up about ``rule.pipeline`` before it selects
    candidates: ``b``: the oldest run the count rule keeps (``count_boundary``); ``s``:
    the newest SUCCESS run; ``f``: the newest ``keep_failed`` failed runs (``keeps_for``).
    Their parameters go to ``params``."""

    def newest(kind: str, where: str, limit: str) -> str:
        return (
            f"SELECT * FROM (SELECT '{kind}' AS kind, pipeline_name, started_at, id "
            f"FROM pipeline_runs WHERE pipeline_name = :p{i} AND {where} "
            f"ORDER BY started_at DESC, id DESC {limit}) AS {kind}{i}"
        )

    terms = []
    params[f"p{i}"] = rule.pipeline
    if rule.keep_runs is not None:
        params[f"o{i}"] = rule.keep_runs - 1
        terms.append(newest("b", f"status NOT IN ({_ACTIVE})", f"LIMIT 1 OFFSET :o{i}"))
    if rule.keep_last_success:
        terms.append(newest("s", f"status IN ({_statuses(('SUCCESS',))})", "LIMIT 1"))
    if 0 < rule.keep_failed <= KEPT_IDS_MAX and rule.failed_statuses:
        params[f"f{i}"] = rule.keep_failed
        where = f"status IN ({_statuses(rule.failed_statuses)})"
        terms.append(newest("f", where, f"LIMIT :f{i}"))
    return terms


def _marks(db: Database, rules: Sequence[RetentionRule]) -> dict[tuple[str, str], list[Key]]:
    """{(kind, pipeline): [(started_at, id), ...]} of ``_mark_terms`` for all ``rules``, in
    one statement per ``_MARKS_PER_STATEMENT`` queries."""
    out: dict[tuple[str, str], list[Key]] = {}
    terms: list[str] = []
    params: dict[str, Any] = {}

    def flush() -> None:
        if terms:
            q = text(" UNION ALL ".join(terms)).columns(
                literal_column("kind", String),
                PipelineRun.pipeline_name,
                PipelineRun.started_at,
                PipelineRun.id,
            )
            with db.engine.connect() as conn:
                for kind, name, started, rid in conn.execute(q, params):
                    out.setdefault((str(kind), str(name)), []).append((started, rid))
        terms.clear()
        params.clear()

    for i, rule in enumerate(rules):
        own: dict[str, Any] = {}
        new = _mark_terms(rule, i, own)
        if len(terms) + len(new) > _MARKS_PER_STATEMENT:
            flush()
        terms.extend(new)
        params.update(own)
    flush()
    return out


def _checked_failed(rule: RetentionRule, tag: str, params: dict[str, Any]) -> str:
    """For a ``keep_failed`` too large to list: SQL that leaves out a failed run with fewer
    than ``keep_failed`` failed runs newer than it in its pipeline."""
    if rule.keep_failed <= KEPT_IDS_MAX or not rule.failed_statuses:
        return ""
    s = _statuses(rule.failed_statuses)
    params[f"kf{tag}"] = rule.keep_failed - 1
    return (
        f" AND NOT (r.status IN ({s}) AND NOT EXISTS (SELECT 1 FROM pipeline_runs n "
        f"WHERE n.pipeline_name = r.pipeline_name AND n.status IN ({s}) "
        f"AND n.started_at >= r.started_at AND (n.started_at > r.started_at OR n.id > r.id) "
        f"LIMIT 1 OFFSET :kf{tag}))"
    )


def backlog(db: Database, rules: Sequence[RetentionRule]) -> Backlog:
    """Finished runs that retention wants gone but that are still here — what the next
    pass archives and deletes — and their recorded log bytes: the runs older than the
    oldest run the count rule keeps or started before the age cut-off, except pinned runs
    and those a keep rule keeps. The conditions of ``lifecycle.selection.due_totals`` (a
    test holds them equal), in two statements for all pipelines instead of a few round
    trips per pipeline: first what the keep rules protect and the count boundaries, then
    the counts. Pipelines with the age rule alone share one index range per cut-off."""
    marks = _marks(db, rules)
    base = (
        "SELECT count(*), coalesce(sum(r.log_size), 0) FROM pipeline_runs r "
        f"WHERE r.status NOT IN ({_ACTIVE}) AND r.pinned_at IS NULL"
    )

    def kept(rule: RetentionRule) -> list[Any]:
        return [rid for kind in ("s", "f") for _, rid in marks.get((kind, rule.pipeline), [])]

    terms: list[tuple[str, dict[str, Any]]] = []
    age_only: dict[tuple[datetime, int, tuple[str, ...]], list[RetentionRule]] = {}
    for i, rule in enumerate(rules):
        boundary = marks.get(("b", rule.pipeline))
        if not boundary:
            if rule.cutoff is not None:
                key = (rule.cutoff, rule.keep_failed, rule.failed_statuses)
                age_only.setdefault(key, []).append(rule)
            continue
        params: dict[str, Any] = {
            f"p{i}": rule.pipeline,
            f"bs{i}": boundary[0][0],
            f"bi{i}": boundary[0][1],
        }
        due = f"r.started_at < :bs{i} OR (r.started_at = :bs{i} AND r.id < :bi{i})"
        if rule.cutoff is not None:
            due += f" OR r.started_at < :c{i}"
            params[f"c{i}"] = rule.cutoff
        sql = f"{base} AND r.pipeline_name = :p{i} AND ({due})"
        if ids := kept(rule):
            sql += f" AND r.id NOT IN :k{i}"
            params[f"k{i}"] = ids
        terms.append((sql + _checked_failed(rule, str(i), params), params))
    for g, ((cutoff, _, _), group) in enumerate(age_only.items()):
        params = {f"gc{g}": cutoff, f"gn{g}": [r.pipeline for r in group]}
        sql = f"{base} AND r.started_at < :gc{g} AND r.pipeline_name IN :gn{g}"
        if ids := [rid for rule in group for rid in kept(rule)]:
            sql += f" AND r.id NOT IN :gk{g}"
            params[f"gk{g}"] = ids
        terms.append((sql + _checked_failed(group[0], f"g{g}", params), params))
    runs = size = 0
    for at in range(0, len(terms), _CHUNK):
        chunk = terms[at : at + _CHUNK]
        params = {k: v for _, p in chunk for k, v in p.items()}
        q = text(" UNION ALL ".join(sql for sql, _ in chunk)).bindparams(
            *[_typed(k, v) for k, v in params.items()]
        )
        with db.engine.connect() as conn:
            for n, b in conn.execute(q):
                runs, size = runs + int(n), size + int(b or 0)
    return Backlog(runs, size)


def _typed(name: str, value: Any) -> Any:
    """A bind parameter typed like the column it is compared with (timestamps as naive
    UTC, ids as the database's UUID form; lists expand to ``IN``)."""
    if isinstance(value, datetime):
        return bindparam(name, value, type_=PipelineRun.started_at.type)
    if isinstance(value, uuid.UUID):
        return bindparam(name, value, type_=PipelineRun.id.type)
    if isinstance(value, list):
        if value and isinstance(value[0], uuid.UUID):
            return bindparam(name, value, expanding=True, type_=PipelineRun.id.type)
        return bindparam(name, value, expanding=True)
    return bindparam(name, value)


# --- the disk -------------------------------------------------------------------------


def free_bytes(path: Path) -> int | None:
    """Free bytes of the file system that holds ``path`` (its nearest existing parent
    while it does not exist yet); None when it cannot be read."""
    probe = path.expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError:
        return None


LATE_COMMIT = timedelta(minutes=10)  # a run's end is committed within this after finished_at
BASE_MAX_AGE = timedelta(minutes=10)  # the base sum is recomputed at least this often


@dataclass(frozen=True)
class _Base:
    until: datetime  # the base covers the runs that finished at or before this instant
    bytes: int
    marker: Hashable  # the newest cleanup pass when the base was summed
    taken: datetime


_bases: dict[str, _Base] = {}
_bases_lock = threading.Lock()
_LOCAL = PipelineRun.log_file.is_not(None)


def _sum_local(db: Database, *ranges: Any) -> int:
    """Recorded log bytes of the local logs, over each of ``ranges`` (conditions on
    ``finished_at``: one index range each), or over all of them without one."""
    total = func.coalesce(func.sum(PipelineRun.log_size), 0)
    sums = [select(total).where(_LOCAL, r) for r in ranges] or [select(total).where(_LOCAL)]
    with db.engine.connect() as conn:
        return sum(int(n or 0) for (n,) in conn.execute(union_all(*sums)))


def local_log_bytes(db: Database, pass_marker: Hashable | None, now: datetime | None = None) -> int:
    """Bytes of the run logs on local disk, from their recorded sizes: a base sum of the
    runs that ended more than ``LATE_COMMIT`` ago, kept in memory, plus the runs that
    ended since (or are still going), read from the index ``(finished_at, log_size)``.

    Outside cleanup passes a run's recorded log size changes only when it ends (its
    ``finished_at`` is set then); passes truncate and delete. So the base is summed
    again when ``pass_marker`` (the newest pass: id and end) changes, at least every
    ``BASE_MAX_AGE``, and not kept at all while a pass runs (``pass_marker`` None): the
    figure is exact but for a run whose end is committed more than ``LATE_COMMIT`` after
    its ``finished_at`` (then it is counted at the next base sum)."""
    now = now or utcnow()
    if pass_marker is None:
        return _sum_local(db)
    key = str(db.engine.url)
    with _bases_lock:
        base = _bases.get(key)
    if base is None or base.marker != pass_marker or now - base.taken > BASE_MAX_AGE:
        until = now - LATE_COMMIT
        base = _Base(until, _sum_local(db, PipelineRun.finished_at <= until), pass_marker, now)
        with _bases_lock:
            _bases[key] = base
    recent = (PipelineRun.finished_at > base.until, PipelineRun.finished_at.is_(None))
    return base.bytes + _sum_local(db, *recent)


def record_disk_sample(
    db: Database, logs_root: Path, pass_id: int | None, now: datetime | None = None
) -> dict[str, Any]:
    """Record the local log bytes, the free space and the archived bytes now (called
    after each cleanup pass); keeps the newest ``MAX_DISK_SAMPLES``. Returns the sample."""
    _, archived = ledger.totals(db)
    row = DiskSample(
        taken_at=now or utcnow(),
        pass_id=pass_id,
        local_log_bytes=store.local_log_bytes(db),
        free_bytes=free_bytes(logs_root),
        archived_bytes=archived,
    )
    with db.session() as s:
        s.add(row)
        s.flush()
        cutoff = s.scalar(
            select(DiskSample.id).order_by(DiskSample.id.desc()).offset(MAX_DISK_SAMPLES).limit(1)
        )
        if cutoff is not None:
            s.execute(delete(DiskSample).where(DiskSample.id <= cutoff))
        return _sample(row)


def _sample(row: DiskSample) -> dict[str, Any]:
    return {
        "at": row.taken_at.isoformat(),
        "pass_id": row.pass_id,
        "local_log_bytes": row.local_log_bytes,
        "free_bytes": row.free_bytes,
        "archived_bytes": row.archived_bytes,
    }


def disk_samples(db: Database, limit: int = 90) -> list[dict[str, Any]]:
    """The newest ``limit`` disk samples, oldest first: ``at``, ``pass_id``,
    ``local_log_bytes``, ``free_bytes``, ``archived_bytes``."""
    q = select(DiskSample).order_by(DiskSample.taken_at.desc(), DiskSample.id.desc()).limit(limit)
    with db.session() as s:
        return [_sample(r) for r in reversed(list(s.scalars(q)))]
