"""The pure incident rules: when a notification is due, and what kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastflow.notify.incidents import (
    MAX_KNOWN_KEYS,
    PASS_KEY,
    Decision,
    Incident,
    Kind,
    decide,
)

T0 = datetime(2026, 6, 1, 2, 0, 5, tzinfo=UTC)


def _open(keys: set[str], at: datetime = T0) -> Incident:
    decision = decide(None, keys, at)
    assert decision.kind == Kind.FAILURE and decision.incident is not None
    return decision.incident


def _step(previous: Incident | None, keys: set[str], at: datetime) -> Decision:
    return decide(previous, keys, at)


def test_no_failures_and_no_incident_announce_nothing() -> None:
    assert decide(None, [], T0) == Decision(None, None)


def test_first_failing_pass_opens_an_incident() -> None:
    decision = decide(None, ["a", "b", "c"], T0)
    assert decision.kind == Kind.FAILURE
    assert decision.new_keys == {"a", "b", "c"}
    incident = decision.incident
    assert incident is not None
    assert incident.opened_at == T0 and incident.last_announced_at == T0
    assert incident.known == incident.failing == {"a", "b", "c"}


def test_same_failures_in_the_next_pass_announce_nothing() -> None:
    incident = _open({"a", "b"})
    decision = _step(incident, {"b", "a"}, T0 + timedelta(hours=1))
    assert decision.kind is None
    assert decision.incident == incident  # nothing changed that matters


def test_fewer_failures_announce_nothing_but_keep_the_incident_open() -> None:
    incident = _open({"a", "b", "c"})
    decision = _step(incident, {"a"}, T0 + timedelta(hours=2))
    assert decision.kind is None and decision.incident is not None
    assert decision.incident.failing == {"a"}
    assert decision.incident.known == {"a", "b", "c"}


def test_a_new_failing_run_is_announced_as_growth() -> None:
    incident = _open({"a", "b"})
    later = T0 + timedelta(minutes=30)
    decision = _step(incident, {"a", "b", "c", "d"}, later)
    assert decision.kind == Kind.GROWN
    assert decision.new_keys == {"c", "d"}
    assert decision.incident is not None
    assert decision.incident.opened_at == T0  # same incident
    assert decision.incident.last_announced_at == later
    assert decision.incident.known == {"a", "b", "c", "d"}
    # and the grown set, seen again, is quiet
    assert _step(decision.incident, {"a", "c", "d"}, later + timedelta(hours=1)).kind is None


def test_a_run_that_failed_before_in_this_incident_is_not_new() -> None:
    incident = _open({"a", "b"})
    fewer = _step(incident, {"a"}, T0 + timedelta(hours=1)).incident
    assert _step(fewer, {"a", "b"}, T0 + timedelta(hours=2)).kind is None


def test_lasting_incident_reminds_once_a_day() -> None:
    incident = _open({"a"})
    assert _step(incident, {"a"}, T0 + timedelta(hours=12)).kind is None
    decision = _step(incident, {"a"}, T0 + timedelta(hours=25))
    assert decision.kind == Kind.REMINDER
    reminded = decision.incident
    assert reminded is not None
    assert reminded.opened_at == T0  # "still failing since" the start
    assert reminded.last_announced_at == T0 + timedelta(hours=25)
    # not again the same day
    assert _step(reminded, {"a"}, T0 + timedelta(hours=30)).kind is None
    assert _step(reminded, {"a"}, T0 + timedelta(hours=50)).kind == Kind.REMINDER


def test_nightly_pass_a_little_earlier_than_yesterday_still_reminds() -> None:
    incident = _open({"a"})
    tonight = T0 + timedelta(days=1) - timedelta(seconds=4)
    assert _step(incident, {"a"}, tonight).kind == Kind.REMINDER


def test_growth_resets_the_reminder_clock() -> None:
    incident = _open({"a"})
    grown = _step(incident, {"a", "b"}, T0 + timedelta(hours=20)).incident
    assert _step(grown, {"a", "b"}, T0 + timedelta(hours=25)).kind is None
    assert _step(grown, {"a", "b"}, T0 + timedelta(hours=44)).kind == Kind.REMINDER


def test_first_clean_pass_recovers_once() -> None:
    incident = _open({"a", "b"})
    decision = _step(incident, set(), T0 + timedelta(hours=3))
    assert decision.kind == Kind.RECOVERY
    assert decision.incident is None
    assert decision.ended == incident
    # the next clean pass has no incident any more
    assert _step(decision.incident, set(), T0 + timedelta(hours=4)) == Decision(None, None)


def test_failure_after_recovery_is_a_new_incident() -> None:
    incident = _open({"a"})
    assert _step(incident, set(), T0 + timedelta(hours=1)).incident is None
    again = decide(None, {"a"}, T0 + timedelta(hours=2))
    assert again.kind == Kind.FAILURE
    assert again.incident is not None and again.incident.opened_at == T0 + timedelta(hours=2)


def test_failure_of_the_whole_pass_is_an_incident_too() -> None:
    incident = _open({PASS_KEY})
    assert _step(incident, {PASS_KEY}, T0 + timedelta(hours=1)).kind is None
    assert _step(incident, {PASS_KEY, "run-1"}, T0 + timedelta(hours=1)).kind == Kind.GROWN
    assert _step(incident, set(), T0 + timedelta(hours=1)).kind == Kind.RECOVERY


def test_stored_sets_are_bounded_and_growth_then_goes_by_count() -> None:
    batch = 200  # a pass lists at most 200 failures
    incident: Incident | None = None
    at = T0
    for i in range(MAX_KNOWN_KEYS // batch):
        at += timedelta(minutes=1)
        incident = decide(incident, {f"r{i}-{j}" for j in range(batch)}, at).incident
    assert incident is not None and len(incident.known) == MAX_KNOWN_KEYS
    unknown = {f"x-{j}" for j in range(batch)}
    assert _step(incident, unknown, at + timedelta(minutes=1)).kind is None
    bigger = unknown | {f"y-{j}" for j in range(10)}
    decision = _step(incident, bigger, at + timedelta(minutes=1))
    assert decision.kind == Kind.GROWN and decision.incident is not None
    assert len(decision.incident.known) == MAX_KNOWN_KEYS
    huge = decide(None, {f"z{j}" for j in range(MAX_KNOWN_KEYS + 5)}, T0).incident
    assert huge is not None and len(huge.failing) == MAX_KNOWN_KEYS


def test_decide_is_pure() -> None:
    incident = _open({"a"})
    first = decide(incident, {"a", "b"}, T0 + timedelta(hours=1))
    second = decide(incident, {"a", "b"}, T0 + timedelta(hours=1))
    assert first == second
    assert incident.known == {"a"}
