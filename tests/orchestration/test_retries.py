"""The retry rule: delays for every backoff (capped, never negative) and who retries."""

from __future__ import annotations

import math

import pytest

from fastflow.db.models import RunStatus
from fastflow.orchestration.retries import retry_delay, should_retry
from fastflow.runs.specs import RetrySpec


@pytest.mark.parametrize(("attempt", "expected"), [(1, 5.0), (2, 5.0), (10, 5.0)])
def test_fixed_backoff_waits_the_same(attempt: int, expected: float) -> None:
    assert retry_delay(RetrySpec(max=10, delay_seconds=5), attempt) == expected


@pytest.mark.parametrize(("attempt", "expected"), [(1, 2.0), (2, 6.0), (3, 18.0), (4, 54.0)])
def test_exponential_backoff_multiplies(attempt: int, expected: float) -> None:
    spec = RetrySpec(max=5, delay_seconds=2, backoff="exponential", multiplier=3)
    assert retry_delay(spec, attempt) == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "expected"), [(1, 10.0), (2, 20.0), (3, 30.0), (4, 30.0)])
def test_exponential_backoff_is_capped(attempt: int, expected: float) -> None:
    spec = RetrySpec(delay_seconds=10, backoff="exponential", max_delay_seconds=30)
    assert retry_delay(spec, attempt) == expected


def test_exponential_overflow_is_capped_not_an_error() -> None:
    spec = RetrySpec(delay_seconds=1, backoff="exponential", max_delay_seconds=3600)
    assert retry_delay(spec, 100_000) == 3600.0
    assert math.isinf(retry_delay(RetrySpec(delay_seconds=1, backoff="exponential"), 100_000))


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1.0), (2, 5.0), (3, 60.0), (4, 60.0)])
def test_custom_schedule_repeats_its_last_value(attempt: int, expected: float) -> None:
    spec = RetrySpec(backoff="custom_schedule", delays=(1, 5, 60))
    assert retry_delay(spec, attempt) == expected


def test_custom_schedule_is_capped_and_falls_back_to_delay_seconds() -> None:
    capped = RetrySpec(backoff="custom_schedule", delays=(1, 500), max_delay_seconds=100)
    assert [retry_delay(capped, n) for n in (1, 2, 3)] == [1.0, 100.0, 100.0]
    empty = RetrySpec(backoff="custom_schedule", delay_seconds=7)
    assert retry_delay(empty, 3) == 7.0


def test_fixed_backoff_is_capped() -> None:
    assert retry_delay(RetrySpec(delay_seconds=90, max_delay_seconds=60), 1) == 60.0


@pytest.mark.parametrize(
    "spec",
    [
        RetrySpec(delay_seconds=-5),
        RetrySpec(backoff="custom_schedule", delays=(-1.0,)),
        RetrySpec(delay_seconds=10, max_delay_seconds=-1),
        RetrySpec(delay_seconds=-1, backoff="exponential"),
    ],
)
def test_delay_is_never_negative(spec: RetrySpec) -> None:
    assert retry_delay(spec, 2) == 0.0


def test_delay_is_a_float() -> None:
    delay = retry_delay(RetrySpec(backoff="custom_schedule", delays=(3,)), 1)
    assert isinstance(delay, float)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_start_at_one(attempt: int) -> None:
    with pytest.raises(ValueError):
        retry_delay(RetrySpec(), attempt)


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.TIMEOUT, "FAILED", "TIMEOUT"])
def test_failures_retry_until_max_attempts_exist(status: RunStatus | str) -> None:
    spec = RetrySpec(max=2)
    assert [should_retry(spec, n, status) for n in (1, 2, 3, 4)] == [True, True, False, False]


@pytest.mark.parametrize(
    "status",
    [RunStatus.SUCCESS, RunStatus.CANCELLED, RunStatus.PENDING, RunStatus.RUNNING, "CANCELLED"],
)
def test_success_and_cancel_never_retry(status: RunStatus | str) -> None:
    assert not should_retry(RetrySpec(max=5), 1, status)


def test_no_retries_by_default() -> None:
    assert not should_retry(RetrySpec(), 1, RunStatus.FAILED)
    assert not should_retry(RetrySpec(max=3), 0, RunStatus.FAILED)
