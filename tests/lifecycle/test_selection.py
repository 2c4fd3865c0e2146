"""SQL candidate selection on real SQLite and PostgreSQL: exact run ids, batches, order."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert

from fastflow.config import load_settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, RunStatus
from fastflow.lifecycle import selection
from fastflow.lifecycle.policy import Action, ActionKind, Policy, RunRef

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    started_at: datetime

    @property
    def key(self) -> tuple[datetime, uuid.UUID]:
        return (self.started_at, self.id)


def add_runs(
    db: Database,
    pipeline: str,
    starts: Sequence[datetime],
    *,
    status: str = RunStatus.SUCCESS,
    log_size: int | None = 10,
    log_file: bool = True,
    ids: Sequence[uuid.UUID] | None = None,
) -> list[Run]:
    """Bulk-insert one run per start time; returns them in the order given."""
    run_ids = list(ids) if ids is not None else [uuid.uuid4() for _ in starts]
    assert len(run_ids) == len(starts)
    finished = status not in (RunStatus.PENDING, RunStatus.RUNNING)
    rows: list[dict[str, Any]] = [
        {
            "id": rid,
            "pipeline_name": pipeline,
            "status": str(status),
            "triggered_by": "schedule",
            "started_at": start,
            "finished_at": start + timedelta(seconds=30) if finished else None,
            "exit_code": 0 if finished else None,
            "log_file": f"{pipeline}/{rid}/run.log" if log_file else None,
            "metrics_file": None,
            "log_size": log_size,
        }
        for rid, start in zip(run_ids, starts, strict=True)
    ]
    if rows:
        with db.session() as s:
            s.execute(insert(PipelineRun), rows)
    return [Run(rid, start) for rid, start in zip(run_ids, starts, strict=True)]


def minutes(n: int, base: datetime = T0) -> list[datetime]:
    """``n`` start times one minute apart, oldest first."""
    return [base + timedelta(minutes=i) for i in range(n)]


def ids_of(batches: Iterable[list[Action]]) -> list[uuid.UUID]:
    return [action.run.id for batch in batches for action in batch]


def oldest_first(runs: Iterable[Run]) -> list[uuid.UUID]:
    return [r.id for r in sorted(runs, key=lambda r: r.key)]


def deletions(db: Database, pipeline: str, policy: Policy, batch: int = 500) -> list[Action]:
    return [a for b in selection.deletion_candidates(db, pipeline, policy, NOW, batch) for a in b]


def truncations(
    db: Database, pipeline: str, policy: Policy, logs_root: Path, batch: int = 500
) -> list[Action]:
    return [
        a
        for b in selection.truncation_candidates(db, pipeline, policy, NOW, logs_root, batch)
        for a in b
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, ff_env: dict[str, str]) -> Iterator[Database]:
    """A migrated database: SQLite through the ``app`` fixture, or a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("app").db
        return
    pg_url: str = request.getfixturevalue("pg_url")
    database = Database(load_settings(database_url=pg_url))
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def logs_root(ff_env: dict[str, str]) -> Path:
    root = Path(ff_env["LOGS_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- retention by count -----------------------------------------------------------------


def test_count_keeps_the_newest_n_finished_runs(db: Database) -> None:
    runs = add_runs(db, "etl", minutes(10))

    actions = deletions(db, "etl", Policy(keep_runs=3))

    assert [a.run.id for a in actions] == [r.id for r in runs[:7]]
    assert all(a.kind is ActionKind.ARCHIVE_AND_DELETE_RUN for a in actions)
    assert all(a.reasons == ("more than 3 finished runs of this pipeline",) for a in actions)
    assert selection.count_boundary(db, "etl", 3) == runs[7].key


def test_selected_runs_carry_the_stored_facts(db: Database) -> None:
    (run,) = add_runs(db, "etl", [T0], status=RunStatus.FAILED, log_size=1234)
    add_runs(db, "etl", [T0 + timedelta(hours=1)])

    (action,) = deletions(db, "etl", Policy(keep_runs=1))

    ref = action.run
    assert ref.id == run.id
    assert ref.pipeline_name == "etl"
    assert ref.status == "FAILED"
    assert ref.triggered_by == "schedule"
    assert ref.started_at == T0
    assert ref.started_at.tzinfo is not None
    assert ref.finished_at == T0 + timedelta(seconds=30)
    assert ref.exit_code == 0
    assert ref.log_file == f"etl/{run.id}/run.log"
    assert ref.metrics_file is None
    assert ref.log_size == 1234


def test_count_boundary_is_none_with_at_most_keep_finished_runs(db: Database) -> None:
    add_runs(db, "etl", minutes(3))

    assert selection.count_boundary(db, "etl", 3) is not None
    assert selection.count_boundary(db, "etl", 4) is None
    assert selection.count_boundary(db, "etl", None) is None
    assert deletions(db, "etl", Policy(keep_runs=3)) == []


def test_running_runs_are_never_selected_nor_counted(db: Database) -> None:
    ancient = datetime(2020, 1, 1, tzinfo=UTC)
    active_old = add_runs(db, "etl", [ancient], status=RunStatus.RUNNING)
    active_old += add_runs(db, "etl", [ancient + timedelta(hours=1)], status=RunStatus.PENDING)
    finished = add_runs(db, "etl", minutes(5))
    # the two newest runs are active: they must not use up the kept places
    add_runs(db, "etl", [NOW - timedelta(minutes=2)], status=RunStatus.RUNNING)
    add_runs(db, "etl", [NOW - timedelta(minutes=1)], status=RunStatus.PENDING)

    policy = Policy(keep_runs=2, max_age_days=365)  # the ancient active runs are too old
    actions = deletions(db, "etl", policy)

    assert selection.count_boundary(db, "etl", 2) == finished[3].key
    assert [a.run.id for a in actions] == [r.id for r in finished[:3]]
    assert not {r.id for r in active_old} & {a.run.id for a in actions}


def test_ancient_active_runs_are_not_selected_by_age(db: Database) -> None:
    ancient = datetime(2001, 1, 1, tzinfo=UTC)
    add_runs(db, "etl", [ancient], status=RunStatus.RUNNING)
    add_runs(db, "etl", [ancient], status=RunStatus.PENDING)
    old_done = add_runs(db, "etl", [ancient], status=RunStatus.CANCELLED)

    assert [a.run.id for a in deletions(db, "etl", Policy(max_age_days=1))] == [old_done[0].id]


def test_active_runs_with_huge_logs_are_not_truncation_candidates(
    db: Database, logs_root: Path
) -> None:
    add_runs(db, "etl", minutes(2), status=RunStatus.RUNNING, log_size=10**9)
    add_runs(db, "etl", minutes(2), status=RunStatus.PENDING, log_size=10**9)
    done = add_runs(db, "etl", minutes(1), status=RunStatus.TIMEOUT, log_size=10**9)

    actions = truncations(db, "etl", Policy(max_log_bytes=100), logs_root)

    assert [a.run.id for a in actions] == [done[0].id]


def test_ties_on_started_at_are_broken_by_id(db: Database, logs_root: Path) -> None:
    same = [T0] * 6
    runs = add_runs(db, "etl", same, log_size=5000)
    by_id = sorted(r.id for r in runs)
    policy = Policy(keep_runs=2, max_log_bytes=100)

    # the newest two by (started_at, id) are the two highest ids
    assert selection.count_boundary(db, "etl", 2) == (T0, by_id[-2])
    for batch in (1, 2, 500):  # keyset paging must not skip or repeat equal start times
        assert [a.run.id for a in deletions(db, "etl", policy, batch)] == by_id[:4]
        assert [a.run.id for a in truncations(db, "etl", policy, logs_root, batch)] == by_id[4:]


def test_ties_mixed_with_distinct_start_times_follow_started_at_then_id(db: Database) -> None:
    starts = [T0, T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1), T0 + timedelta(2)]
    runs = add_runs(db, "etl", starts * 2)  # each start time twice

    actions = deletions(db, "etl", Policy(keep_runs=3), batch=2)

    expected = oldest_first(runs)[:-3]
    assert [a.run.id for a in actions] == expected


# --- retention by age -------------------------------------------------------------------


def test_age_selects_runs_started_strictly_before_the_cutoff(db: Database) -> None:
    cutoff = NOW - timedelta(days=7)
    runs = add_runs(
        db,
        "etl",
        [
            cutoff - timedelta(days=300),
            cutoff - timedelta(microseconds=1),
            cutoff,
            cutoff + timedelta(microseconds=1),
            NOW,
        ],
    )

    actions = deletions(db, "etl", Policy(max_age_days=7))

    assert [a.run.id for a in actions] == [runs[0].id, runs[1].id]
    assert all(a.reasons == ("older than 7 days",) for a in actions)


def test_count_and_age_together_select_the_union_with_both_reasons(db: Database) -> None:
    old = add_runs(db, "etl", minutes(3, NOW - timedelta(days=60)))
    recent = add_runs(db, "etl", minutes(4, NOW - timedelta(days=1)))

    actions = deletions(db, "etl", Policy(keep_runs=5, max_age_days=30))

    # count alone removes the 2 oldest; age removes all 3 old ones
    assert [a.run.id for a in actions] == [r.id for r in old]
    assert [len(a.reasons) for a in actions] == [2, 2, 1]
    assert recent[0].id not in {a.run.id for a in actions}


def test_no_deletion_limits_select_nothing(db: Database) -> None:
    add_runs(db, "etl", minutes(5, datetime(2000, 1, 1, tzinfo=UTC)))

    assert deletions(db, "etl", Policy(max_log_bytes=1)) == []
    assert deletions(db, "etl", Policy()) == []


# --- pipelines --------------------------------------------------------------------------


def test_pipelines_are_independent(db: Database) -> None:
    a = add_runs(db, "alpha", minutes(5))
    b = add_runs(db, "beta", [t + timedelta(seconds=30) for t in minutes(2)])
    c = add_runs(db, "Größe ü", minutes(4, T0 - timedelta(days=1)))

    policy = Policy(keep_runs=2)

    assert sorted(selection.pipeline_names(db)) == sorted(["alpha", "beta", "Größe ü"])
    assert [x.run.id for x in deletions(db, "alpha", policy)] == [r.id for r in a[:3]]
    assert deletions(db, "beta", policy) == []
    assert [x.run.id for x in deletions(db, "Größe ü", policy)] == [r.id for r in c[:2]]
    assert selection.count_boundary(db, "beta", 2) == b[0].key
    assert deletions(db, "gamma", policy) == []


# --- batching ---------------------------------------------------------------------------


def test_batches_cover_every_candidate_once_in_ascending_started_at_order(
    db: Database,
) -> None:
    starts = minutes(13)
    shuffled = starts[:]
    random.Random(7).shuffle(shuffled)  # insertion order must not matter
    runs = add_runs(db, "etl", shuffled)

    batches = list(selection.deletion_candidates(db, "etl", Policy(keep_runs=3), NOW, batch=3))

    assert [len(b) for b in batches] == [3, 3, 3, 1]
    flat = ids_of(batches)
    assert flat == oldest_first(runs)[:10]
    assert len(set(flat)) == 10


def test_exact_multiple_of_batch_size_yields_no_empty_batch(db: Database) -> None:
    add_runs(db, "etl", minutes(9))

    batches = list(selection.deletion_candidates(db, "etl", Policy(keep_runs=3), NOW, batch=3))

    assert [len(b) for b in batches] == [3, 3]


def test_truncation_batches_are_bounded_and_ordered(db: Database, logs_root: Path) -> None:
    runs = add_runs(db, "etl", minutes(7), log_size=2000)

    batches = list(
        selection.truncation_candidates(
            db, "etl", Policy(max_log_bytes=1000), NOW, logs_root, batch=2
        )
    )

    assert [len(b) for b in batches] == [2, 2, 2, 1]
    assert ids_of(batches) == [r.id for r in runs]
    assert all(a.kind is ActionKind.TRUNCATE_LOG for b in batches for a in b)


def test_selection_over_20000_runs_uses_bounded_batches(db: Database) -> None:
    n, keep, batch = 20_000, 100, 500
    base = NOW - timedelta(days=400)
    starts = [base + timedelta(minutes=i) for i in range(n)]
    runs = add_runs(db, "big", starts)
    add_runs(db, "other", starts[:50])

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        started = time.monotonic()
        batches = selection.deletion_candidates(db, "big", Policy(keep_runs=keep), NOW, batch)
        first = next(batches)
        queries_for_first_batch = len(statements)
        sizes = [len(first)]
        seen = [a.run.id for a in first]
        for chunk in batches:
            sizes.append(len(chunk))
            seen.extend(a.run.id for a in chunk)
        elapsed = time.monotonic() - started
    finally:
        event.remove(db.engine, "before_cursor_execute", record)

    pages = -(-(n - keep) // batch)
    assert max(sizes) <= batch
    assert len(sizes) == pages
    assert seen == [r.id for r in runs[: n - keep]]
    # lazy: the first batch needs the boundary query, the keep-rule query (the newest
    # SUCCESS run, issue 16) and one page, not the whole table
    assert queries_for_first_batch == 3
    page_queries = [q for q in statements if "LIMIT" in q.upper()]
    # + the boundary query and the keep-rule query
    assert len(page_queries) == len(statements) == pages + 2
    assert elapsed < 5, f"selection of {n} runs took {elapsed:.1f} s"


# --- oversized logs ---------------------------------------------------------------------


def _write_log(logs_root: Path, rel: str, size: int) -> Path:
    path = logs_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * (size - 1) + b"\n")
    return path


def test_truncation_selects_only_logs_above_the_limit(db: Database, logs_root: Path) -> None:
    at_limit = add_runs(db, "etl", minutes(2), log_size=1000)
    bigger = add_runs(db, "etl", [T0 + timedelta(minutes=5)], log_size=1001)
    no_file = add_runs(db, "etl", [T0 + timedelta(minutes=6)], log_size=10**9, log_file=False)

    actions = truncations(db, "etl", Policy(max_log_bytes=1000), logs_root)

    assert [a.run.id for a in actions] == [bigger[0].id]
    assert actions[0].reasons == ("log is 1001 bytes, limit 1000 bytes",)
    assert {r.id for r in at_limit + no_file}.isdisjoint({a.run.id for a in actions})


def test_runs_without_a_recorded_size_are_measured_on_disk(
    db: Database, logs_root: Path, tmp_path: Path
) -> None:
    big, small, missing, escaping = add_runs(db, "etl", minutes(4), log_size=None)
    _write_log(logs_root, f"etl/{big.id}/run.log", 250)
    _write_log(logs_root, f"etl/{small.id}/run.log", 100)
    # a stored path that escapes LOGS_DIR is refused, not measured
    (tmp_path / "outside.log").write_bytes(b"y" * 10_000)
    with db.session() as s:
        row = s.get(PipelineRun, escaping.id)
        assert row is not None
        row.log_file = "../outside.log"

    actions = truncations(db, "etl", Policy(max_log_bytes=100), logs_root)

    assert [a.run.id for a in actions] == [big.id]
    assert actions[0].run.log_size == 250
    assert actions[0].reasons == ("log is 250 bytes, limit 100 bytes",)
    assert missing.id not in {a.run.id for a in actions}


def test_truncation_candidates_exclude_deletion_candidates(db: Database, logs_root: Path) -> None:
    too_old = add_runs(db, "etl", minutes(2, NOW - timedelta(days=90)), log_size=5000)
    recent = add_runs(db, "etl", minutes(6, NOW - timedelta(days=2)), log_size=5000)
    policy = Policy(keep_runs=4, max_age_days=30, max_log_bytes=1000)

    deleted = [a.run.id for a in deletions(db, "etl", policy)]
    truncated = [a.run.id for a in truncations(db, "etl", policy, logs_root)]

    assert deleted == [r.id for r in too_old + recent[:2]]
    assert truncated == [r.id for r in recent[2:]]
    assert set(deleted).isdisjoint(truncated)


def test_old_runs_kept_by_count_are_not_truncated_when_age_deletes_them(
    db: Database, logs_root: Path
) -> None:
    old = add_runs(db, "etl", minutes(2, NOW - timedelta(days=90)), log_size=5000)
    recent = add_runs(db, "etl", [NOW - timedelta(days=1)], log_size=5000)
    policy = Policy(keep_runs=10, max_age_days=30, max_log_bytes=1000)

    assert [a.run.id for a in truncations(db, "etl", policy, logs_root)] == [recent[0].id]
    assert [a.run.id for a in deletions(db, "etl", policy)] == [r.id for r in old]


def test_no_size_limit_selects_no_truncation(db: Database, logs_root: Path) -> None:
    add_runs(db, "etl", minutes(3), log_size=10**12)

    assert truncations(db, "etl", Policy(keep_runs=1, max_age_days=1), logs_root) == []


# --- PostgreSQL session time zone -------------------------------------------------------


@pytest.mark.parametrize(
    "zone",
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
    ],
)
def test_postgres_selection_does_not_depend_on_the_session_time_zone(
    pg_url: str, ff_env: dict[str, str], logs_root: Path, zone: str
) -> None:
    url = f"{pg_url}?options=-c%20TimeZone%3D{zone.replace('/', '%2F')}"
    database = Database(load_settings(database_url=url))
    database.migrate()
    try:
        runs = add_runs(database, "etl", minutes(10), log_size=5000)
        policy = Policy(keep_runs=3, max_log_bytes=1000)

        def capped(batches: Iterator[list[Action]]) -> list[uuid.UUID]:
            # a broken keyset cursor can repeat pages forever: never take more than needed
            return ids_of(itertools.islice(batches, 11))

        deleted = capped(selection.deletion_candidates(database, "etl", policy, NOW, 2))
        age_only = capped(
            selection.deletion_candidates(
                database,
                "etl",
                # every run is old: without keep_last_success (issue 16) all of them go
                Policy(max_age_days=1, keep_last_success=False),
                T0 + timedelta(days=1, hours=1),
                2,
            )
        )
        truncated = capped(
            selection.truncation_candidates(database, "etl", policy, NOW, logs_root, 2)
        )

        assert deleted == [r.id for r in runs[:7]]
        assert age_only == [r.id for r in runs]
        assert truncated == [r.id for r in runs[7:]]
    finally:
        database.dispose()


def test_driver_rows_of_every_shape_become_the_same_run_refs() -> None:
    """``_refs`` converts what sqlite3 (hex text, naive-UTC text), psycopg (UUID, naive
    datetimes) and other drivers (text ids with datetimes, aware datetimes) return into
    one and the same ``RunRef``."""
    rid = uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")
    started = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    finished = datetime(2026, 3, 1, 10, 0, 42, tzinfo=UTC)
    tail = ("SUCCESS", "cli")
    rest = (0, "etl/x/run.log", None, 123)
    shapes = [
        (rid.hex, *tail, "2026-03-01 10:00:00.123456", "2026-03-01 10:00:42.000000", *rest),
        (rid, *tail, started.replace(tzinfo=None), finished.replace(tzinfo=None), *rest),
        (str(rid), *tail, started.replace(tzinfo=None), finished.replace(tzinfo=None), *rest),
        (rid, *tail, started.astimezone(timezone(timedelta(hours=2))), finished, *rest),
    ]
    want = RunRef(rid, "etl", "SUCCESS", "cli", started, finished, 0, "etl/x/run.log", None, 123)
    for shape in shapes:
        (got,) = selection._refs([shape], "etl")
        assert got == want
        assert got.started_at.utcoffset() == timedelta(0)
    no_finish = (rid.hex, *tail, "2026-03-01 10:00:00.123456", None, *rest)
    assert selection._refs([no_finish], "etl")[0].finished_at is None
    # SQLite text that fastflow did not write: "Z" or an offset (the whole page is then
    # converted value by value; it failed every pass before)
    for started_text in ("2026-03-01T10:00:00.123456Z", "2026-03-01 12:00:00.123456+02:00"):
        fast = (uuid.uuid4().hex, *tail, "2026-03-01 10:00:00.123456", None, *rest)
        odd = (rid.hex, *tail, started_text, "2026-03-01 10:00:42.000000", *rest)
        got_fast, got_odd = selection._refs([fast, odd], "etl")
        assert got_odd == want and got_odd.started_at.tzinfo is not None
        assert got_fast.started_at == started and got_fast.finished_at is None


def test_a_sqlite_timestamp_with_an_offset_does_not_stop_planning(app: Any) -> None:
    """A row whose ``started_at`` someone wrote with ``Z`` or an offset is planned (its
    time read as written) instead of failing every pass (``fastflow runs`` read it; the
    planner did not). SQLite compares such text as text, so the count rule may see it out
    of order; the pure decision, on the parsed times, still never deletes a kept run."""
    db: Database = app.db
    runs = add_runs(db, "etl", minutes(4))
    odd = {runs[0].id: "2020-01-01T00:00:00Z", runs[1].id: "2026-05-01 10:01:00+02:00"}
    with db.engine.begin() as conn:
        for run_id, text in odd.items():
            conn.exec_driver_sql(
                "UPDATE pipeline_runs SET started_at = ? WHERE id = ?", (text, run_id.hex)
            )
    by_age = deletions(db, "etl", Policy(max_age_days=30, keep_last_success=False))
    started = {a.run.id: a.run.started_at for a in by_age}
    assert set(started) == {r.id for r in runs}
    assert started[runs[0].id] == datetime(2020, 1, 1, tzinfo=UTC)
    assert started[runs[1].id] == T0 + timedelta(minutes=1)
    by_count = deletions(db, "etl", Policy(keep_runs=1, keep_last_success=False))
    assert {a.run.id for a in by_count} <= {r.id for r in runs[:3]}  # never the newest


def test_fast_conversions_equal_the_standard_ones_on_random_values() -> None:
    """``_uid_hex`` is ``uuid.UUID`` and ``_aware`` is ``replace(tzinfo=UTC)``: same
    value, same hash, same text, same type, for random ids and timestamps (the edges
    of the calendar and of the microseconds included); other spellings of an id still
    go through ``uuid.UUID``, and bad ones fail as loudly."""
    rng = random.Random(14)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(2000)]
    ids += [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), uuid.uuid4()]
    for rid in ids:
        got = selection._uid_hex(rid.hex)
        assert type(got) is uuid.UUID
        assert (got, hash(got), str(got), got.version) == (rid, hash(rid), str(rid), rid.version)
        assert got.is_safe is uuid.SafeUUID.unknown
    assert selection._uid_hex(str(ids[0])) == ids[0]  # with hyphens: the standard parser
    for bad in ("z" * 32, "12ab", "", "-" + "f" * 31):
        with pytest.raises(ValueError):
            selection._uid_hex(bad)
    stamps = [datetime.min, datetime.max, datetime(2026, 12, 31, 23, 59, 59, 999999)]
    stamps += [
        datetime(1970, 1, 1) + timedelta(microseconds=rng.randrange(0, 4_000_000_000_000_000))
        for _ in range(2000)
    ]
    for naive in stamps:
        want = naive.replace(tzinfo=UTC)
        got_dt = selection._aware(naive)
        assert got_dt == want and got_dt.tzinfo is UTC
        assert got_dt.isoformat() == want.isoformat()
    folded = datetime(2026, 10, 25, 2, 30, fold=1)
    assert selection._aware(folded).fold == folded.replace(tzinfo=UTC).fold == 1
