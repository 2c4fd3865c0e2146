"""Keep rules and pins (issue 16): the newest SUCCESS run, the newest N failed runs and
pinned runs survive count and age retention; a pinned run is never truncated either.

Table-driven over the pure decision, then over real SQL selection (SQLite and
PostgreSQL), then end to end against the S3 test server — including runs pinned while
a pass is already archiving or truncating them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from fastflow import accounts
from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, utcnow
from fastflow.errors import InvalidPipelineConfig
from fastflow.lifecycle import batch as batches
from fastflow.lifecycle import selection
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.executor import PassRun, pipeline_policy
from fastflow.lifecycle.policy import (
    ActionKind,
    Keeps,
    Policy,
    RunRef,
    decide,
    policy_for,
)
from fastflow.lifecycle.summary import PassSummary, PlanEntry
from fastflow.runs import pins, pipelines
from fastflow.runs.pipelines import Retention
from fastflow.server import create_app
from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, failures, keys, ledger, run_row, seed_run

T0 = NOW - timedelta(days=100)

# --- the pure decision, table-driven ----------------------------------------------------


def ref(i: int, status: str = "SUCCESS", *, days_old: float = 50, log_size: int = 10) -> RunRef:
    started = NOW - timedelta(days=days_old)
    return RunRef(
        uuid.UUID(int=i),
        "p",
        status,
        "schedule",
        started,
        started + timedelta(seconds=5),
        0,
        f"p/{i}/run.log",
        None,
        log_size,
    )


OLD = ref(1)  # 50 days old: gone by age (30 days) or by count (boundary after it)
BOUNDARY = (NOW - timedelta(days=10), uuid.UUID(int=999))
NEWEST_OK = Keeps(last_success=OLD.key)


@pytest.mark.parametrize(
    ("policy", "run", "keeps", "is_pinned", "kind", "reason"),
    [
        # count and age remove an ordinary old run
        (Policy(keep_runs=3), OLD, Keeps(), False, "archive_and_delete_run", None),
        (Policy(max_age_days=30), OLD, Keeps(), False, "archive_and_delete_run", None),
        # ... but never the newest SUCCESS run (default on), by count or by age
        (Policy(keep_runs=3), OLD, NEWEST_OK, False, "keep", "last_success"),
        (Policy(max_age_days=30), OLD, NEWEST_OK, False, "keep", "last_success"),
        (
            Policy(max_age_days=30, keep_last_success=False),
            OLD,
            NEWEST_OK,
            False,
            "archive_and_delete_run",
            None,
        ),
        # the newest N failed runs: FAILED and TIMEOUT count, CANCELLED does not
        (
            Policy(max_age_days=30, keep_failed=2),
            ref(2, "FAILED"),
            Keeps(failed_from=ref(2, "FAILED").key),
            False,
            "keep",
            "keep_failed",
        ),
        (
            Policy(max_age_days=30, keep_failed=2),
            ref(3, "TIMEOUT", days_old=40),
            Keeps(failed_from=ref(2, "FAILED").key),
            False,
            "keep",
            "keep_failed",
        ),
        (
            Policy(max_age_days=30, keep_failed=2),
            ref(4, "CANCELLED", days_old=40),
            Keeps(failed_from=ref(2, "FAILED").key),
            False,
            "archive_and_delete_run",
            None,
        ),
        (  # older than the oldest kept failed run
            Policy(max_age_days=30, keep_failed=2),
            ref(5, "FAILED", days_old=60),
            Keeps(failed_from=ref(2, "FAILED").key),
            False,
            "archive_and_delete_run",
            None,
        ),
        (  # keep_failed 0: the rule is off even when a boundary is known
            Policy(max_age_days=30, keep_failed=0),
            ref(2, "FAILED"),
            Keeps(failed_from=ref(2, "FAILED").key),
            False,
            "archive_and_delete_run",
            None,
        ),
        # a pin wins over every rule and also stops truncation
        (Policy(keep_runs=3), OLD, NEWEST_OK, True, "keep", "pinned"),
        (
            Policy(max_age_days=30, keep_last_success=False),
            ref(6, "FAILED"),
            Keeps(),
            True,
            "keep",
            "pinned",
        ),
        (
            Policy(max_log_bytes=100),
            ref(7, days_old=1, log_size=1000),
            Keeps(),
            True,
            "keep",
            "pinned",
        ),
        (
            Policy(max_log_bytes=100),
            ref(7, days_old=1, log_size=1000),
            Keeps(),
            False,
            "truncate_log",
            None,
        ),
        # a run kept by a rule stays size-bounded: truncated instead of deleted
        (
            Policy(max_age_days=30, max_log_bytes=100),
            ref(1, log_size=1000),
            NEWEST_OK,
            False,
            "truncate_log",
            None,
        ),
        # a young run is left alone, pinned or not
        (Policy(max_age_days=30), ref(8, days_old=1), Keeps(), True, None, None),
    ],
    ids=[
        "count-deletes",
        "age-deletes",
        "count-keeps-last-success",
        "age-keeps-last-success",
        "last-success-rule-off",
        "keep-failed",
        "timeout-counts-as-failed",
        "cancelled-does-not",
        "older-failed-goes",
        "keep-failed-zero",
        "pin-beats-last-success",
        "pin-keeps-failed",
        "pin-stops-truncation",
        "unpinned-truncated",
        "kept-run-still-truncated",
        "young-untouched",
    ],
)
def test_decide_table(
    policy: Policy,
    run: RunRef,
    keeps: Keeps,
    is_pinned: bool,
    kind: str | None,
    reason: str | None,
) -> None:
    action = decide(policy, NOW, run, BOUNDARY, keeps, is_pinned)

    assert (action.kind.value if action else None) == kind
    if reason is not None:
        assert action is not None and action.reasons == (reason,)


def test_a_keep_entry_is_a_plan_entry_with_one_reason() -> None:
    action = decide(Policy(max_age_days=30), NOW, OLD, None, NEWEST_OK)
    assert action is not None

    entry = PlanEntry.of(action)

    assert (entry.action, entry.reason, entry.bytes) == ("keep", "last_success", 10)
    assert action.describe().startswith("keep ")


# --- settings and pipeline.json ---------------------------------------------------------


def test_policy_for_reads_the_globals_and_the_pipeline_overrides(ff_env: dict[str, str]) -> None:
    base = load_settings(log_retention_keep_last_success=False, log_retention_keep_failed=4)

    assert policy_for(load_settings()).keep_last_success is True
    assert policy_for(load_settings()).keep_failed == 0
    assert (policy_for(base).keep_last_success, policy_for(base).keep_failed) == (False, 4)
    over = policy_for(base, Retention(keep_last_success=True, keep_failed=0))
    assert (over.keep_last_success, over.keep_failed) == (True, 0)


def test_pipeline_json_keep_keys(make_pipeline: MakePipeline, ff_env: dict[str, str]) -> None:
    make_pipeline(
        "etl", config=json.dumps({"retention": {"keep_last_success": False, "keep_failed": 3}})
    )

    loaded = pipelines.load(Path(ff_env["PIPELINES_DIR"]), "etl")

    assert loaded.retention == Retention(keep_last_success=False, keep_failed=3)
    assert loaded.to_dict()["retention"]["keep_failed"] == 3


@pytest.mark.parametrize(
    ("retention", "named"),
    [
        ({"keep_last_success": "yes"}, "retention.keep_last_success must be true or false"),
        ({"keep_last_success": 1}, "retention.keep_last_success must be true or false"),
        ({"keep_failed": -1}, "retention.keep_failed must be an integer"),
        ({"keep_failed": True}, "retention.keep_failed must be an integer"),
        ({"keep_failed": 2.5}, "retention.keep_failed must be an integer"),
        ({"keep_latest": 1}, "retention.keep_latest is not a known key"),
    ],
)
def test_invalid_keep_values_name_the_key(
    make_pipeline: MakePipeline, ff_env: dict[str, str], retention: dict[str, Any], named: str
) -> None:
    make_pipeline("etl", config=json.dumps({"retention": retention}))

    with pytest.raises(InvalidPipelineConfig, match=named.replace(".", r"\.")):
        pipelines.load(Path(ff_env["PIPELINES_DIR"]), "etl")


# --- SQL selection, table-driven (real SQLite and PostgreSQL) ------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, ff_env: dict[str, str]) -> Iterator[Database]:
    if request.param == "sqlite":
        yield request.getfixturevalue("app").db
        return
    database = Database(load_settings(database_url=request.getfixturevalue("pg_url")))
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


def add(db: Database, spec: str, *, big: str = "", pinned: str = "") -> list[uuid.UUID]:
    """One run per letter, oldest first, a day apart, the newest 91 days after T0:
    S SUCCESS, F FAILED, T TIMEOUT, C CANCELLED, R RUNNING. ``big``/``pinned``: the
    positions (as digits) of runs with a 5,000-byte log / a pin."""
    names = {"S": "SUCCESS", "F": "FAILED", "T": "TIMEOUT", "C": "CANCELLED", "R": "RUNNING"}
    ids = [uuid.uuid4() for _ in spec]
    rows = []
    for i, (rid, letter) in enumerate(zip(ids, spec, strict=True)):
        start = T0 + timedelta(days=i)
        rows.append(
            {
                "id": rid,
                "pipeline_name": "etl",
                "status": names[letter],
                "triggered_by": "schedule",
                "started_at": start,
                "finished_at": None if letter == "R" else start + timedelta(seconds=5),
                "exit_code": None,
                "log_file": f"etl/{rid}/run.log",
                "metrics_file": None,
                "log_size": 5000 if str(i) in big else 10,
                "pinned_at": NOW if str(i) in pinned else None,
                "pinned_by": "test" if str(i) in pinned else None,
                "pin_reason": "audit" if str(i) in pinned else None,
            }
        )
    with db.session() as s:
        s.execute(insert(PipelineRun), rows)
    return ids


def outcome(db: Database, policy: Policy, ids: list[uuid.UUID], logs_root: Path) -> str:
    """What the planner does with each run, in order: D delete, T truncate, K keep
    (lower-case letter of the reason: p pinned, l last_success, f keep_failed), - nothing."""
    got: dict[uuid.UUID, str] = {}
    for batch in selection.deletion_candidates(db, "etl", policy, NOW, 3):
        got.update({a.run.id: "D" for a in batch})
    for batch in selection.truncation_candidates(db, "etl", policy, NOW, logs_root, 3):
        got.update({a.run.id: "T" for a in batch})
    for batch in selection.kept_candidates(db, "etl", policy, NOW, 3):
        for a in batch:
            assert a.kind is ActionKind.KEEP and a.run.id not in got
            got[a.run.id] = "K" + a.reasons[0][0]
    return " ".join(got.get(rid, "-") for rid in ids)


AGE = 30  # with T0 100 days before NOW: positions 0..69 are older than 30 days


@pytest.mark.parametrize(
    ("spec", "policy", "extra", "expected"),
    [
        ("SSFSF", Policy(keep_runs=2), {}, "D D D - -"),
        ("SFFFF", Policy(keep_runs=2), {}, "Kl D D - -"),
        ("SFFFF", Policy(keep_runs=2, keep_last_success=False), {}, "D D D - -"),
        ("FFFSS", Policy(keep_runs=1, keep_failed=2), {}, "D Kk Kk D -"),
        ("SFTC", Policy(max_age_days=AGE, keep_failed=1), {}, "Kl D Kk D"),
        ("SFTC", Policy(max_age_days=AGE, keep_failed=5), {}, "Kl Kk Kk D"),
        ("SSS", Policy(keep_runs=1), {"pinned": "0"}, "Kp D -"),
        ("SSR", Policy(keep_runs=1, max_log_bytes=1), {"pinned": "2", "big": "2"}, "D T -"),
        ("SSS", Policy(max_log_bytes=1000), {"big": "12", "pinned": "2"}, "- T Kp"),
        ("SS", Policy(max_age_days=AGE, max_log_bytes=1000), {"big": "1"}, "D T"),
        ("FS", Policy(max_age_days=AGE, max_log_bytes=1000), {"big": "1", "pinned": "1"}, "D Kp"),
    ],
    ids=[
        "count-newest-success-in-range",
        "count-keeps-old-last-success",
        "last-success-off",
        "keep-two-failed",
        "age-last-success-and-one-failed",
        "age-fewer-failed-than-n",
        "pinned-old-run",
        "running-never-touched",
        "pinned-oversized-not-truncated",
        "kept-oversized-truncated",
        "pinned-kept-oversized",
    ],
)
def test_selection_table(
    db: Database,
    ff_env: dict[str, str],
    spec: str,
    policy: Policy,
    extra: dict[str, str],
    expected: str,
) -> None:
    ids = add(db, spec, **extra)

    assert outcome(db, policy, ids, Path(ff_env["LOGS_DIR"])) == expected


def test_due_totals_count_what_deletion_candidates_yield(db: Database) -> None:
    add(db, "SFFSSF", pinned="1")
    policy = Policy(keep_runs=1, keep_failed=1)
    planned = [a.run for b in selection.deletion_candidates(db, "etl", policy, NOW) for a in b]

    runs, size = selection.due_totals(db, "etl", policy, NOW)

    assert (runs, size) == (len(planned), sum(r.log_size or 0 for r in planned)) == (3, 30)


# --- end to end against the S3 test server ---------------------------------------------------


def tune(ctx: Context, **overrides: Any) -> Context:
    data = ctx.settings.model_dump()
    data.update(overrides)
    return Context(settings=load_settings(**data), db=ctx.db)


@pytest.fixture
def s3_app(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_READ_TIMEOUT", "5")
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def _key(rid: uuid.UUID, name: str = "run.log") -> str:
    return f"pipeline-logs/etl/{rid}/{name}"


def on_request(s3: S3Env, callback: Callable[[str, str], None]) -> None:
    """Call ``callback(method, path)`` in the proxy for every S3 request (before it is
    forwarded), changing nothing about the request."""

    def watch(method: str, path: str) -> bool:
        callback(method, path)
        return False

    s3.proxy.delay(0, match=watch)


def test_a_pass_keeps_the_last_success_the_newest_failed_and_pinned_runs(
    s3_app: Context, s3: S3Env
) -> None:
    ctx = tune(s3_app, log_retention_days=30, log_retention_keep_failed=2)
    day = timedelta(days=1)
    pinned_old = seed_run(ctx, "etl", NOW - 90 * day)
    failed_old = seed_run(ctx, "etl", NOW - 80 * day, status="FAILED")
    failed_new = seed_run(ctx, "etl", NOW - 70 * day, status="TIMEOUT")
    ok_old = seed_run(ctx, "etl", NOW - 60 * day)
    ok_last = seed_run(ctx, "etl", NOW - 50 * day)
    young = seed_run(ctx, "etl", NOW - 1 * day, status="FAILED")
    pins.pin(ctx.db, ctx.settings, pinned_old.id, "tax audit 2026", "test")

    summary = run_pass(ctx, "test", now=NOW)

    assert (summary.deleted_runs, summary.archived_runs, summary.backup_failures) == (2, 2, 0)
    for gone in (failed_old, ok_old):
        assert run_row(ctx, gone.id) is None and not gone.log.exists()
        assert _key(gone.id) in keys(s3.client(), s3.bucket)
    for kept in (pinned_old, failed_new, ok_last, young):
        assert run_row(ctx, kept.id) is not None and kept.log.read_bytes() == kept.log_bytes
        assert _key(kept.id) not in keys(s3.client(), s3.bucket)
    row = run_row(ctx, pinned_old.id)
    assert row is not None and (row.pinned_by, row.pin_reason) == ("test", "tax audit 2026")

    # unpinned, the run is an ordinary old run again: the next pass archives and deletes it
    pins.unpin(ctx.db, ctx.settings, pinned_old.id)
    again = run_pass(ctx, "test", now=NOW)
    assert again.deleted_runs == 1 and run_row(ctx, pinned_old.id) is None
    assert ledger(ctx)[pinned_old.id].log_sha256 == pinned_old.sha


@pytest.fixture(params=["sqlite", "postgresql"])
def any_s3_app(request: pytest.FixtureRequest, s3_app: Context) -> Iterator[Context]:
    """``s3_app`` on SQLite, or the same settings on a fresh PostgreSQL database (the
    executor locks the run's row there, SQLite's write lock here)."""
    if request.param == "sqlite":
        yield s3_app
        return
    ctx = tune(s3_app, database_url=request.getfixturevalue("pg_url"))
    ctx = Context(settings=ctx.settings, db=Database(ctx.settings))
    ctx.db.migrate()
    try:
        yield ctx
    finally:
        ctx.db.dispose()


def test_a_run_pinned_while_it_is_archived_is_not_deleted(any_s3_app: Context, s3: S3Env) -> None:
    ctx = tune(any_s3_app, log_retention_runs=1)
    old = seed_run(ctx, "etl", NOW - timedelta(days=3))
    seed_run(ctx, "etl", NOW - timedelta(days=1))
    policy = pipeline_policy(ctx.settings, "etl")
    planned = [a for b in selection.deletion_candidates(ctx.db, "etl", policy, NOW) for a in b]
    assert [a.run.id for a in planned] == [old.id]
    pinned_during_upload: list[bool] = []

    def pin_on_upload(method: str, path: str) -> None:
        # in the proxy thread while the log's PUT is in flight: after the executor's first
        # check, before its delete
        if method == "PUT" and _key(old.id) in path and not pinned_during_upload:
            pins.pin(ctx.db, ctx.settings, old.id, "found in the audit", "auditor")
            pinned_during_upload.append(True)

    on_request(s3, pin_on_upload)
    summary = PassSummary(trigger="test")
    p = PassRun(ctx, summary, NOW, archive.open_store(ctx.settings), None)
    with ThreadPoolExecutor(2) as pool:  # the pass's own path: chunked, batched commits
        batches.run_actions(p, pool, planned)

    assert pinned_during_upload == [True]
    assert (summary.archived_runs, summary.deleted_runs, summary.kept_runs) == (1, 0, 1)
    assert summary.backup_failures == 0 and failures(ctx) == []
    assert old.log.read_bytes() == old.log_bytes and old.metrics.exists()
    row = run_row(ctx, old.id)
    assert row is not None and row.pinned_by == "auditor"
    entry = ledger(ctx)[old.id]
    assert entry.local_deleted_at is None  # archived, and its local copy kept


def test_a_run_pinned_while_its_log_is_truncated_keeps_its_log(s3_app: Context, s3: S3Env) -> None:
    ctx = tune(s3_app, log_max_size_mb=1)
    big = seed_run(ctx, "etl", NOW - timedelta(hours=1), log=b"a line of log text\n" * 100_000)

    def pin_on_upload(method: str, path: str) -> None:
        if method == "PUT" and _key(big.id) in path and not pins.pinned(ctx.db, big.id):
            pins.pin(ctx.db, ctx.settings, big.id, "legal request", "auditor")

    on_request(s3, pin_on_upload)
    summary = run_pass(ctx, "test", now=NOW)

    assert summary.archived_before_truncation == 1  # the full log was archived first ...
    assert (summary.truncated_logs, summary.kept_runs, summary.backup_failures) == (0, 1, 0)
    assert big.log.read_bytes() == big.log_bytes  # ... and the local log kept whole
    s3.proxy.clear()
    assert run_pass(ctx, "test", now=NOW).truncated_logs == 0  # pinned: never truncated


def test_kept_runs_are_counted_on_metrics_by_reason(s3_app: Context) -> None:
    ctx = tune(s3_app, log_retention_runs=1, log_retention_keep_failed=1)
    day = timedelta(days=1)
    pinned_run = seed_run(ctx, "etl", NOW - 5 * day)
    seed_run(ctx, "etl", NOW - 4 * day)  # the newest SUCCESS, out of the count range
    seed_run(ctx, "etl", NOW - 3 * day, status="FAILED")
    seed_run(ctx, "etl", NOW - 2 * day, status="FAILED")  # kept by count
    pins.pin(ctx.db, ctx.settings, pinned_run.id, "audit", "test")
    token = accounts.create_token(ctx.db, "m", "viewer")

    text = (
        TestClient(create_app(ctx, schedule=False))
        .get("/metrics", headers={"Authorization": f"Bearer {token}"})
        .text
    )

    # count keeps the newest run (FAILED); the older FAILED run is not among the newest 1
    assert 'fastflow_retention_kept_runs{reason="pinned"} 1.0' in text
    assert 'fastflow_retention_kept_runs{reason="last_success"} 1.0' in text
    assert 'fastflow_retention_kept_runs{reason="keep_failed"} 0.0' in text


def test_kept_candidates_list_the_dry_run_keep_entries(s3_app: Context) -> None:
    ctx = tune(s3_app, log_retention_days=30)
    old_pinned = seed_run(ctx, "etl", NOW - timedelta(days=60))
    last = seed_run(ctx, "etl", NOW - timedelta(days=40))
    pins.pin(ctx.db, ctx.settings, old_pinned.id, "audit", "test")
    policy = pipeline_policy(ctx.settings, "etl")

    entries = [
        PlanEntry.of(a) for b in selection.kept_candidates(ctx.db, "etl", policy, NOW) for a in b
    ]

    assert [(e.run_id, e.action, e.reason) for e in entries] == [
        (str(old_pinned.id), "keep", "pinned"),
        (str(last.id), "keep", "last_success"),
    ]


def test_dry_run_plan_shows_kept_runs_and_why(app: Context) -> None:
    """Needs ``lifecycle.cleanup._plan_only`` to list ``selection.kept_candidates``."""
    now = utcnow()
    day = timedelta(days=1)
    pinned_run = seed_run(app, "etl", now - 6 * day)
    last_ok = seed_run(app, "etl", now - 5 * day)
    older_failed = seed_run(app, "etl", now - 4 * day, status="FAILED")
    newest_failed = seed_run(app, "etl", now - 3 * day, status="FAILED")
    seed_run(app, "etl", now - 2 * day, status="CANCELLED")
    pins.pin(app.db, app.settings, pinned_run.id, "audit", "test")
    env = {"LOG_RETENTION_RUNS": "1", "LOG_RETENTION_KEEP_FAILED": "1"}

    res = run_cli("cleanup", "--dry-run", "--json", env=env)

    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    plan = {e["run_id"]: (e["action"], e["reason"]) for e in data["plan"]}
    assert plan == {
        str(pinned_run.id): ("keep", "pinned"),
        str(last_ok.id): ("keep", "last_success"),
        str(older_failed.id): (
            "archive_and_delete_run",
            "more than 1 finished runs of this pipeline",
        ),
        str(newest_failed.id): ("keep", "keep_failed"),
    }
    assert (data["planned_runs"], data["kept_runs"]) == (1, 3)
    text = run_cli("cleanup", "--dry-run", env=env)
    assert text.returncode == 0, text.stderr
    keep_lines = [line for line in text.stdout.splitlines() if line.startswith("keep ")]
    assert len(keep_lines) == 3 and any(line.endswith(": pinned") for line in keep_lines)
