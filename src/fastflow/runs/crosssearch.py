"""Search the logs of many runs, local and archived, newest run first.

Guarantees:
- runs come newest first (``started_at``, then id) from ``pipeline_runs`` and from the
  archive ledger (runs whose rows retention deleted), in keyset batches: memory does not
  grow with the number of runs;
- logs are searched by ``workers`` threads, each streaming one log (local, or read back
  from the archive and decompressed) through ``logsearch``; at most ``2 * workers`` runs
  are in flight, each holding at most ``limit`` hits; results come out in run order;
- the search ends after ``limit`` hits: runs in flight stop between blocks, the rest are
  never read;
- a run whose log cannot be read is reported (``RunSkipped``) and the search goes on; a
  regular expression that hits its time limit ends the whole search (``RegexTimeout``).

A locally truncated log is searched as it is on disk (its full copy stays in the archive).
"""

from __future__ import annotations

import pickle
import re
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import and_, func, or_, select, union_all

from fastflow.archive import ledger
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import FastflowError, InvalidInput, LogNotStarted
from fastflow.runs import logsearch, readback
from fastflow.runs import store as runs

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
WORKERS = 8
BATCH = 200
READ_CHUNK = 1024 * 1024  # local reads; archived objects stream in the store's chunks


@dataclass(frozen=True)
class Filters:
    """Which runs to search (all optional): pipeline, ``since`` <= started_at < ``until``,
    status."""

    pipeline: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None


@dataclass(frozen=True)
class RunRef:
    run_id: uuid.UUID
    pipeline_name: str
    started_at: datetime
    row: PipelineRun | None
    entry: ArchivedRun | None

    @property
    def head(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "pipeline_name": self.pipeline_name,
            "started_at": self.started_at.isoformat(),
        }


@dataclass(frozen=True)
class SearchHit:
    run: RunRef
    line: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.head, "line": self.line, "text": self.text}


@dataclass(frozen=True)
class RunSkipped:
    """A run whose log could not be searched, and why (one line)."""

    run: RunRef
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.head, "error": self.error}


@dataclass
class Progress:
    """Where the search is: runs searched (of ``total`` when counted), of them read from
    the archive, bytes searched, hits so far."""

    runs: int = 0
    archived: int = 0
    skipped: int = 0
    bytes: int = 0
    hits: int = 0
    total: int | None = None
    limited: bool = False  # stopped at the limit


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_when(text: str, *, end_of_day: bool = False) -> datetime:
    """A date (``2026-06-01``) or a date and time (``2026-06-01T12:00``, ``…Z``,
    ``…+02:00``); without a zone it is UTC. A bare date is midnight, or with
    ``end_of_day`` the next midnight (so that ``--until DAY`` includes that day)."""
    value = text.strip()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise InvalidInput(
            f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:  # the database stores UTC: a date within a day of year 1 or 9999 has none
        when.astimezone(UTC)
        if end_of_day and _DATE.fullmatch(value):
            when += timedelta(days=1)
        (when + timedelta(days=1)).astimezone(UTC)
    except OverflowError:
        raise InvalidInput(
            f"{text!r} is out of range: give a date between 0001-01-02 and 9999-12-30"
        ) from None
    return when


# --- which runs ---------------------------------------------------------------------------


def _sides(f: Filters) -> list[Any]:
    """The two queries of ``(id, started_at)``: rows, and ledger entries without a row."""
    rows: Any = select(PipelineRun.id.label("id"), PipelineRun.started_at.label("started_at"))
    if f.pipeline:
        rows = rows.where(PipelineRun.pipeline_name == f.pipeline)
    if f.status:
        rows = rows.where(PipelineRun.status == f.status.upper())
    if f.since:
        rows = rows.where(PipelineRun.started_at >= f.since)
    if f.until:
        rows = rows.where(PipelineRun.started_at < f.until)
    gone: Any = ledger.rows_deleted(f.pipeline, f.status)
    if f.since:
        gone = gone.where(ArchivedRun.started_at >= f.since)
    if f.until:
        gone = gone.where(ArchivedRun.started_at < f.until)
    return [rows, gone]


def count_runs(ctx: Context, f: Filters) -> int:
    """How many runs ``f`` selects."""
    merged = union_all(*(side.with_only_columns(side.selected_columns.id) for side in _sides(f)))
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(merged.subquery())) or 0)


def select_runs(ctx: Context, f: Filters, batch: int = BATCH) -> Generator[RunRef, None, None]:
    """The runs ``f`` selects, newest first, fetched ``batch`` at a time (keyset)."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        sides = []
        for side in _sides(f):
            started, rid = side.selected_columns.started_at, side.selected_columns.id
            if after is not None:
                side = side.where(
                    or_(started < after[0], and_(started == after[0], rid > after[1]))
                )
            sides.append(side.order_by(started.desc(), rid).limit(batch).subquery())
        merged = union_all(*(select(s.c.id, s.c.started_at) for s in sides)).subquery()
        q = (
            select(merged.c.id, merged.c.started_at)
            .order_by(merged.c.started_at.desc(), merged.c.id)
            .limit(batch)
        )
        with ctx.db.session() as s:
            page = [(rid, started) for rid, started in s.execute(q).all()]
        if not page:
            return
        ids = [rid for rid, _ in page]
        rows = runs.get_many(ctx.db, ids)
        entries = ledger.get_many(ctx.db, ids)
        for rid in ids:
            row, entry = rows.get(rid), entries.get(rid)
            if row is not None:
                yield RunRef(rid, row.pipeline_name, row.started_at, row, entry)
            elif entry is not None:
                yield RunRef(rid, entry.pipeline_name, entry.started_at, None, entry)
        after = (page[-1][1], page[-1][0])
        if len(page) < batch:
            return


# --- searching ----------------------------------------------------------------------------


SPILL_AFTER = 4 * 1024 * 1024  # characters of hit text one run's result keeps in memory


@dataclass
class _Result:
    """One run's search: its hits are held until the runs before it were sent (results
    come out in run order). Past ``SPILL_AFTER`` characters of hit text they go to an
    unnamed temporary file instead, so that memory does not grow with a log's matches
    (an outside audit: a run with many long matching lines held them all, 167 MB for a
    157 MB log, times the runs in flight)."""

    hits: list[logsearch.Hit]
    size: int
    archived: bool
    error: str | None = None
    count: int = 0
    held: int = 0
    spill: IO[bytes] | None = None

    def add(self, hit: logsearch.Hit) -> None:
        self.count += 1
        if self.spill is None and self.held + len(hit.text) <= SPILL_AFTER:
            self.hits.append(hit)
            self.held += len(hit.text)
            return
        if self.spill is None:
            # closed by ``all_hits`` (or when a result never sent is collected)
            self.spill = tempfile.TemporaryFile(prefix="fastflow-search-")  # noqa: SIM115
        pickle.dump((hit.line, hit.text), self.spill, protocol=pickle.HIGHEST_PROTOCOL)

    def all_hits(self) -> Generator[logsearch.Hit, None, None]:
        """The hits in order (read back from the file past the memory's share), then
        the file is gone."""
        yield from self.hits
        spill, self.spill = self.spill, None
        if spill is None:
            return
        with spill:
            spill.seek(0)
            while True:
                try:
                    line, text = pickle.load(spill)  # (this process's own file)
                except EOFError:
                    return
                yield logsearch.Hit(line, text)


def _search_one(
    ctx: Context, ref: RunRef, matcher: logsearch.Matcher, cap: int, stop: threading.Event
) -> _Result:
    if stop.is_set():
        return _Result([], 0, False)
    try:
        source = readback.open_log(ctx, ref.run_id, ref.row, chunk=READ_CHUNK, entry=ref.entry)
    except logsearch.SearchError:
        raise
    except LogNotStarted:
        return _Result([], 0, False)  # nothing to search, nothing lost
    except FastflowError as e:
        return _Result([], 0, False, str(e))
    result = _Result([], 0, source.origin == "archive")
    steps = logsearch.search_steps(source.chunks, matcher)
    try:
        for step in steps:
            if isinstance(step, int):
                result.size += step
                if stop.is_set():
                    break
            else:
                result.add(step)
                if result.count >= cap or stop.is_set():
                    break
    except logsearch.SearchError:
        raise
    except (FastflowError, OSError) as e:
        result.error = str(e) if isinstance(e, FastflowError) else f"cannot read the log: {e}"
    finally:
        steps.close()
    return result


def search_runs(
    ctx: Context,
    matcher: logsearch.Matcher,
    filters: Filters,
    *,
    limit: int = DEFAULT_LIMIT,
    workers: int = WORKERS,
    count: bool = False,
) -> Iterator[SearchHit | RunSkipped | Progress]:
    """Hits of the selected runs, newest run first, at most ``limit``; ``RunSkipped`` for
    a run that could not be read; a ``Progress`` after each run (with ``count``, its
    ``total`` is the number of runs selected)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    progress = Progress(total=count_runs(ctx, filters) if count else None)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastflow-search")
    inflight: deque[tuple[RunRef, Future[_Result]]] = deque()
    refs = select_runs(ctx, filters)
    try:
        for ref in refs:
            inflight.append((ref, pool.submit(_search_one, ctx, ref, matcher, limit, stop)))
            if len(inflight) < 2 * workers:
                continue
            yield from _drain_one(inflight, progress, limit)
            if progress.limited:
                return
        while inflight:
            yield from _drain_one(inflight, progress, limit)
            if progress.limited:
                return
    finally:
        stop.set()
        for _, future in inflight:
            future.cancel()
        # never blocks (a client that went away closes this from the event loop): the
        # workers see ``stop`` between blocks and end by themselves
        pool.shutdown(wait=False, cancel_futures=True)
        refs.close()


def _drain_one(
    inflight: deque[tuple[RunRef, Future[_Result]]], progress: Progress, limit: int
) -> Iterator[SearchHit | RunSkipped | Progress]:
    ref, future = inflight.popleft()
    result = future.result()  # a RegexTimeout in a worker ends the search here
    progress.runs += 1
    progress.bytes += result.size
    progress.archived += result.archived
    if result.error is not None:
        progress.skipped += 1
        yield RunSkipped(ref, result.error)
    hits = result.all_hits()
    try:
        for hit in hits:
            yield SearchHit(ref, hit.line, hit.text)
            progress.hits += 1
            if progress.hits >= limit:
                progress.limited = True
                break
    finally:
        hits.close()
    yield progress
