"""Pure retention planning: policy + now + run (+ count boundary) -> action."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from fastflow.config import load_settings
from fastflow.db.models import RunStatus
from fastflow.lifecycle.policy import (
    MB,
    Action,
    ActionKind,
    Keeps,
    Policy,
    RunRef,
    age_cutoff,
    decide,
    decider,
    fallback,
    policy_for,
)
from fastflow.runs import pipelines
from fastflow.runs.pipelines import Retention
from tests.conftest import MakePipeline

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FINISHED = [RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED]
ACTIVE = [RunStatus.PENDING, RunStatus.RUNNING]


def make_run(
    *,
    started_at: datetime = NOW - timedelta(hours=1),
    status: str = RunStatus.SUCCESS,
    run_id: uuid.UUID | None = None,
    log_size: int | None = 10,
    log_file: str | None = "p/run/run.log",
) -> RunRef:
    return RunRef(
        id=run_id or uuid.uuid4(),
        pipeline_name="p",
        status=str(status),
        triggered_by="cli",
        started_at=started_at,
        finished_at=None if status in ACTIVE else started_at + timedelta(minutes=1),
        exit_code=None if status in ACTIVE else 0,
        log_file=log_file,
        metrics_file=None,
        log_size=log_size,
    )


# --- active runs ------------------------------------------------------------------------


@pytest.mark.parametrize("status", ACTIVE)
def test_active_runs_never_yield_an_action_even_if_ancient_and_oversized(status: str) -> None:
    run = make_run(status=status, started_at=datetime(2000, 1, 1, tzinfo=UTC), log_size=10**12)
    policy = Policy(keep_runs=1, max_age_days=1, max_log_bytes=1)
    far_future_boundary = (NOW + timedelta(days=365), uuid.UUID(int=2**128 - 1))

    assert decide(policy, NOW, run, far_future_boundary) is None


@pytest.mark.parametrize("status", FINISHED)
def test_every_finished_status_can_be_deleted_by_age(status: str) -> None:
    run = make_run(status=status, started_at=NOW - timedelta(days=10))

    action = decide(Policy(max_age_days=5), NOW, run, None)

    assert action is not None
    assert action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert action.run is run


# --- retention by count -----------------------------------------------------------------


def test_run_strictly_older_than_count_boundary_is_deleted() -> None:
    boundary_start = NOW - timedelta(days=1)
    run = make_run(started_at=boundary_start - timedelta(microseconds=1))

    action = decide(Policy(keep_runs=3), NOW, run, (boundary_start, uuid.uuid4()))

    assert action is not None
    assert action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert action.reasons == ("more than 3 finished runs of this pipeline",)


def test_the_boundary_run_itself_is_kept() -> None:
    run = make_run(started_at=NOW - timedelta(days=1))

    assert decide(Policy(keep_runs=3), NOW, run, run.key) is None


def test_runs_newer_than_the_boundary_are_kept() -> None:
    boundary = (NOW - timedelta(days=1), uuid.uuid4())
    run = make_run(started_at=NOW - timedelta(days=1) + timedelta(microseconds=1))

    assert decide(Policy(keep_runs=3), NOW, run, boundary) is None


def test_equal_started_at_is_ordered_by_id_against_the_boundary() -> None:
    start = NOW - timedelta(days=1)
    boundary = (start, uuid.UUID(int=500))
    lower = make_run(started_at=start, run_id=uuid.UUID(int=499))
    higher = make_run(started_at=start, run_id=uuid.UUID(int=501))
    policy = Policy(keep_runs=1)

    lower_action = decide(policy, NOW, lower, boundary)
    assert lower_action is not None
    assert lower_action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert decide(policy, NOW, higher, boundary) is None


def test_no_boundary_means_the_count_rule_deletes_nothing() -> None:
    # fewer finished runs than keep_runs: selection passes no boundary
    run = make_run(started_at=datetime(2001, 1, 1, tzinfo=UTC))

    assert decide(Policy(keep_runs=3), NOW, run, None) is None


def test_boundary_is_ignored_without_a_count_limit() -> None:
    run = make_run(started_at=NOW - timedelta(days=3))
    boundary = (NOW, uuid.uuid4())

    assert decide(Policy(max_age_days=30), NOW, run, boundary) is None


# --- retention by age -------------------------------------------------------------------


def test_age_cutoff_is_now_minus_days() -> None:
    assert age_cutoff(Policy(max_age_days=7), NOW) == datetime(2026, 5, 25, 12, 0, tzinfo=UTC)


def test_age_cutoff_is_none_without_an_age_limit() -> None:
    assert age_cutoff(Policy(keep_runs=5, max_log_bytes=MB), NOW) is None


def test_run_started_just_before_the_age_cutoff_is_deleted() -> None:
    run = make_run(started_at=NOW - timedelta(days=7, microseconds=1))

    action = decide(Policy(max_age_days=7), NOW, run, None)

    assert action is not None
    assert action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert action.reasons == ("older than 7 days",)


def test_run_started_exactly_at_the_age_cutoff_is_kept() -> None:
    run = make_run(started_at=NOW - timedelta(days=7))

    assert decide(Policy(max_age_days=7), NOW, run, None) is None


def test_age_is_measured_against_the_injected_now() -> None:
    run = make_run(started_at=datetime(2026, 1, 1, tzinfo=UTC))
    policy = Policy(max_age_days=30)

    assert decide(policy, datetime(2026, 1, 30, tzinfo=UTC), run, None) is None
    assert decide(policy, datetime(2026, 2, 1, tzinfo=UTC), run, None) is not None


def test_both_reasons_are_listed_when_count_and_age_apply() -> None:
    run = make_run(started_at=NOW - timedelta(days=40))
    boundary = (NOW - timedelta(days=1), uuid.uuid4())

    action = decide(Policy(keep_runs=2, max_age_days=30), NOW, run, boundary)

    assert action is not None
    assert action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert action.reasons == (
        "more than 2 finished runs of this pipeline",
        "older than 30 days",
    )


# --- oversized logs ---------------------------------------------------------------------


def test_kept_run_with_log_larger_than_limit_is_truncated() -> None:
    run = make_run(log_size=1001)

    action = decide(Policy(max_log_bytes=1000), NOW, run, None)

    assert action is not None
    assert action.kind is ActionKind.TRUNCATE_LOG
    assert action.reasons == ("log is 1001 bytes, limit 1000 bytes",)


def test_log_exactly_at_the_limit_is_not_truncated() -> None:
    assert decide(Policy(max_log_bytes=1000), NOW, make_run(log_size=1000), None) is None


@pytest.mark.parametrize(
    ("log_file", "log_size"),
    [(None, 10**9), ("p/run/run.log", None)],
    ids=["no-log-file", "unknown-size"],
)
def test_no_truncation_without_a_log_file_or_a_known_size(
    log_file: str | None, log_size: int | None
) -> None:
    run = make_run(log_file=log_file, log_size=log_size)

    assert decide(Policy(max_log_bytes=1), NOW, run, None) is None


def test_deleted_run_is_never_also_truncated() -> None:
    run = make_run(started_at=NOW - timedelta(days=100), log_size=10**9)

    action = decide(Policy(max_age_days=30, max_log_bytes=MB), NOW, run, None)

    assert action is not None
    assert action.kind is ActionKind.ARCHIVE_AND_DELETE_RUN
    assert not any("bytes" in reason for reason in action.reasons)


def test_unlimited_policy_keeps_everything() -> None:
    run = make_run(started_at=datetime(1999, 1, 1, tzinfo=UTC), log_size=10**12)
    policy = Policy()

    assert policy.is_unlimited
    assert not policy.limits_deletion
    assert decide(policy, NOW, run, (NOW, uuid.uuid4())) is None


def test_size_limit_alone_does_not_limit_deletion() -> None:
    policy = Policy(max_log_bytes=MB)

    assert not policy.limits_deletion
    assert not policy.is_unlimited


# --- fallback ---------------------------------------------------------------------------


def test_fallback_archives_and_drops_files_keeping_the_original_reasons() -> None:
    run = make_run(log_size=5000)
    truncation = Action(ActionKind.TRUNCATE_LOG, run, ("log is 5000 bytes, limit 10 bytes",))

    replacement = fallback(truncation, "No space left on device")

    assert replacement.kind is ActionKind.ARCHIVE_AND_DROP_FILES
    assert replacement.run is run
    assert replacement.reasons == (
        "log is 5000 bytes, limit 10 bytes",
        "truncation failed: No space left on device",
    )
    assert truncation.kind is ActionKind.TRUNCATE_LOG  # the original is unchanged


def test_describe_names_kind_pipeline_run_and_reasons() -> None:
    run = make_run(started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    text = Action(ActionKind.ARCHIVE_AND_DELETE_RUN, run, ("a", "b")).describe()

    assert text.startswith("archive_and_delete_run")
    assert f" p {run.id} " in text
    assert "2026-01-02T03:04:05+00:00" in text
    assert text.endswith(": a; b")


# --- policy_for -------------------------------------------------------------------------


def test_policy_from_global_settings_converts_megabytes_to_bytes(
    ff_env: dict[str, str],
) -> None:
    settings = load_settings(log_retention_runs=30, log_retention_days=90, log_max_size_mb=5)

    assert policy_for(settings) == Policy(
        keep_runs=30, max_age_days=90, max_log_bytes=5 * 1024 * 1024
    )


def test_unset_settings_mean_unlimited(ff_env: dict[str, str]) -> None:
    policy = policy_for(load_settings())

    assert policy == Policy()
    assert policy.is_unlimited


def test_zero_in_settings_means_unlimited(ff_env: dict[str, str]) -> None:
    settings = load_settings(log_retention_runs=0, log_retention_days=0)

    assert policy_for(settings) == Policy()


def test_zero_in_environment_means_unlimited(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_RETENTION_RUNS", "0")
    monkeypatch.setenv("LOG_RETENTION_DAYS", "0")

    assert policy_for(load_settings()) == Policy()


def test_pipeline_overrides_win_over_globals(ff_env: dict[str, str]) -> None:
    settings = load_settings(log_retention_runs=30, log_retention_days=90, log_max_size_mb=50)

    policy = policy_for(settings, Retention(runs=3, days=7, max_size_mb=2))

    assert policy == Policy(keep_runs=3, max_age_days=7, max_log_bytes=2 * MB)


def test_overrides_that_are_unset_fall_back_to_globals(ff_env: dict[str, str]) -> None:
    settings = load_settings(log_retention_runs=30, log_retention_days=90, log_max_size_mb=50)

    policy = policy_for(settings, Retention(runs=3))

    assert policy == Policy(keep_runs=3, max_age_days=90, max_log_bytes=50 * MB)


def test_overrides_apply_when_no_global_limit_is_set(ff_env: dict[str, str]) -> None:
    policy = policy_for(load_settings(), Retention(days=14, max_size_mb=1))

    assert policy == Policy(keep_runs=None, max_age_days=14, max_log_bytes=MB)


def test_zero_in_pipeline_json_means_unlimited_even_with_a_global_limit(
    ff_env: dict[str, str],
) -> None:
    settings = load_settings(log_retention_runs=30, log_retention_days=90, log_max_size_mb=50)

    policy = policy_for(settings, Retention(runs=0, days=0, max_size_mb=0))

    assert policy == Policy()


def test_policy_from_pipeline_json_file(make_pipeline: MakePipeline) -> None:
    make_pipeline("etl", config='{"retention": {"runs": 0, "days": 3}}')
    settings = load_settings(log_retention_runs=30, log_max_size_mb=4)

    loaded = pipelines.load(settings.pipelines_dir, "etl")
    policy = policy_for(settings, loaded.retention)

    assert policy == Policy(keep_runs=None, max_age_days=3, max_log_bytes=4 * MB)


# --- the fast per-pipeline decider against the rules written out plainly -----------------


def _rules(
    policy: Policy,
    run: RunRef,
    boundary: tuple[datetime, uuid.UUID] | None,
    keeps: Keeps,
    pinned: bool,
) -> tuple[str, tuple[str, ...]] | None:
    """The module docstring's rules, one by one, without any shortcut."""
    if run.status in ("QUEUED", "PENDING", "RUNNING"):
        return None
    by_count = (
        policy.keep_runs is not None
        and boundary is not None
        and (run.started_at, run.id) < boundary
    )
    cutoff = age_cutoff(policy, NOW)
    by_age = cutoff is not None and run.started_at < cutoff
    oversized = (
        policy.max_log_bytes is not None
        and run.log_file is not None
        and run.log_size is not None
        and run.log_size > policy.max_log_bytes
    )
    kept: str | None = None
    if pinned:
        kept = "pinned"
    elif (
        policy.keep_last_success
        and keeps.last_success == (run.started_at, run.id)
        and run.status == "SUCCESS"
    ):
        kept = "last_success"
    elif (
        policy.keep_failed
        and keeps.failed_from is not None
        and run.status in ("FAILED", "TIMEOUT")
        and (run.started_at, run.id) >= keeps.failed_from
    ):
        kept = "keep_failed"
    if by_count or by_age:
        if kept is None:
            reasons = []
            if by_count:
                reasons.append(f"more than {policy.keep_runs} finished runs of this pipeline")
            if by_age:
                reasons.append(f"older than {policy.max_age_days} days")
            return "archive_and_delete_run", tuple(reasons)
        if kept == "pinned" or not oversized:
            return "keep", (kept,)
    if oversized:
        if pinned:
            return "keep", ("pinned",)
        return "truncate_log", (f"log is {run.log_size} bytes, limit {policy.max_log_bytes} bytes",)
    return None


@pytest.mark.parametrize("seed", range(5))
def test_decider_matches_the_rules_written_out_on_random_runs(seed: int) -> None:
    rng = random.Random(seed)
    statuses = ["SUCCESS", "FAILED", "TIMEOUT", "CANCELLED", "PENDING", "RUNNING", "QUEUED"]
    starts = [NOW - timedelta(days=d) for d in range(0, 60, 3)]  # shared: ties on started_at
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(6)]
    for _ in range(300):
        policy = Policy(
            keep_runs=rng.choice([None, 1, 5]),
            max_age_days=rng.choice([None, 7, 30]),
            max_log_bytes=rng.choice([None, 100]),
            keep_last_success=rng.random() < 0.5,
            keep_failed=rng.choice([0, 2]),
        )
        boundary = rng.choice([None, (rng.choice(starts), rng.choice(ids))])
        keeps = Keeps(
            last_success=rng.choice([None, (rng.choice(starts), rng.choice(ids))]),
            failed_from=rng.choice([None, (rng.choice(starts), rng.choice(ids))]),
        )
        one = decider(policy, NOW, boundary, keeps)
        for _ in range(20):
            run = make_run(
                started_at=rng.choice(starts),
                status=rng.choice(statuses),
                run_id=rng.choice(ids),
                log_size=rng.choice([None, 10, 1000]),
                log_file=rng.choice([None, "p/r/run.log"]),
            )
            pinned = rng.random() < 0.2
            want = _rules(policy, run, boundary, keeps, pinned)
            got = one(run, pinned)
            assert (None if got is None else (got.kind.value, got.reasons)) == want
            assert decide(policy, NOW, run, boundary, keeps, pinned) == got
            assert got is None or got.run is run
