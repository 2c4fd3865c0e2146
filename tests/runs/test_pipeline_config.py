"""pipeline.json: the orchestration keys, native and as Fast-Flow aliases; every unknown
or unsupported key is refused with a message naming it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fastflow.errors import InvalidPipelineConfig
from fastflow.runs.pipeline_config import parse
from fastflow.runs.specs import RetrySpec, ScheduleSpec, TriggerSpec

WHERE = Path("/p/etl/pipeline.json")

NATIVE = {
    "schedules": [
        {"cron": "*/15 * * * *", "timezone": "Europe/Berlin", "env": {"MODE": "incremental"}},
        {"interval_seconds": 3600, "start": "2026-12-01T00:00:00Z", "end": "2027-06-30T00:00:00Z"},
    ],
    "max_instances": 1,
    "on_overlap": "skip",
    "retries": {"max": 2, "delay_seconds": 30, "backoff": "exponential", "max_delay_seconds": 600},
    "triggers": {"on_success": ["load_dwh"], "on_failure": ["page_oncall"]},
    "notify": {"on_failure": True, "on_recovery": True},
}


def test_the_native_example_of_the_issue() -> None:
    cfg = parse(dict(NATIVE), WHERE)
    first, second = cfg.schedules
    assert first == ScheduleSpec(
        key="0", cron="*/15 * * * *", timezone="Europe/Berlin", env={"MODE": "incremental"}
    )
    assert second.interval_seconds == 3600 and second.key == "1"
    assert second.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert second.end == datetime(2027, 6, 30, tzinfo=UTC)
    assert cfg.retries == RetrySpec(
        max=2, delay_seconds=30, backoff="exponential", max_delay_seconds=600
    )
    assert cfg.triggers == TriggerSpec(("load_dwh",), ("page_oncall",))
    assert cfg.max_instances == 1 and cfg.on_overlap == "skip"


def test_fast_flow_keys_mean_the_same() -> None:
    fast_flow: dict[str, Any] = {
        "description": "Täglicher Report",
        "schedule_cron": "0 9 * * *",
        "schedule_start": "2025-01-01",
        "schedule_end": "2025-12-31T23:59:59",
        "retry_attempts": 3,
        "retry_strategy": {
            "type": "exponential_backoff",
            "initial_delay": 60,
            "max_delay": 3600,
            "multiplier": 2.0,
        },
        "max_instances": 2,
        "default_env": {"LOG_LEVEL": "INFO"},
        "downstream_triggers": [
            {"pipeline": "pipeline_b", "on_success": True, "on_failure": False},
            {"pipeline": "pipeline_c", "on_success": True, "on_failure": True},
        ],
        "tags": ["daily"],
        "enabled": True,
        "timeout": 0,
        "type": "script",
    }
    cfg = parse(fast_flow, WHERE)
    (schedule,) = cfg.schedules
    assert schedule.cron == "0 9 * * *" and schedule.start == datetime(2025, 1, 1, tzinfo=UTC)
    assert cfg.retries == RetrySpec(
        max=3, backoff="exponential", delay_seconds=60, max_delay_seconds=3600, multiplier=2.0
    )
    assert cfg.triggers == TriggerSpec(("pipeline_b", "pipeline_c"), ("pipeline_c",))
    assert cfg.env == {"LOG_LEVEL": "INFO"} and cfg.max_instances == 2
    assert cfg.timeout is None  # 0 = no timeout
    assert cfg.tags == ("daily",)


def test_fast_flow_named_schedules_and_webhook_keys() -> None:
    cfg = parse(
        {
            "default_env": {"LOG_LEVEL": "INFO"},
            "webhook_key": "top-secret-key",
            "schedules": [
                {
                    "id": "prod",
                    "schedule_cron": "0 8 * * *",
                    "default_env": {"ENVIRONMENT": "production"},
                    "retry_attempts": 1,
                    "retry_strategy": {"type": "fixed_delay", "delay": 120},
                    "timeout": 60,
                },
                {"id": "staging", "schedule_interval_seconds": 3600, "enabled": False},
            ],
            "run_once_at": "2026-01-15T12:00:00",
        },
        WHERE,
    )
    prod, staging = cfg.schedules[:2]
    assert prod.key == "prod" and prod.run_config_id == "prod"
    assert prod.env == {"ENVIRONMENT": "production"}
    assert not staging.enabled
    assert cfg.schedule_retries["prod"] == RetrySpec(max=1, delay_seconds=120)
    assert cfg.schedule_timeouts["prod"] == 60
    assert cfg.webhook_keys == {None: "top-secret-key"}


def test_custom_retry_schedule_native_and_alias() -> None:
    native = parse({"retries": {"max": 3, "backoff": "custom_schedule", "delays": [1, 5]}}, WHERE)
    alias = parse(
        {"retry_attempts": 3, "retry_strategy": {"type": "custom_schedule", "delays": [1, 5]}},
        WHERE,
    )
    assert native.retries.delays == alias.retries.delays == (1.0, 5.0)
    assert native.retries.backoff == alias.retries.backoff == "custom_schedule"
    # an outside audit: ``delays`` without a backoff was ignored (the default is fixed)
    implied = parse({"retries": {"max": 3, "delays": [1, 5]}}, WHERE).retries
    assert (implied.backoff, implied.delays) == ("custom_schedule", (1.0, 5.0))
    assert parse({"retries": {"max": 3}}, WHERE).retries.backoff == "fixed"
    for other in ("fixed", "exponential"):
        with pytest.raises(InvalidPipelineConfig, match="used only with backoff custom_schedule"):
            parse({"retries": {"max": 3, "backoff": other, "delays": [1, 5]}}, WHERE)
    # and Fast-Flow's form the same way (a review)
    alias_spec = parse({"retry_attempts": 2, "retry_strategy": {"delays": [4, 9]}}, WHERE).retries
    assert (alias_spec.backoff, alias_spec.delays) == ("custom_schedule", (4.0, 9.0))
    with pytest.raises(InvalidPipelineConfig, match="used only with type custom_schedule"):
        parse(
            {"retry_attempts": 2, "retry_strategy": {"type": "fixed_delay", "delays": [4]}}, WHERE
        )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"scheduel": []}, "scheduel is not a known pipeline.json key"),
        ({"restart_on_crash": True}, "restart_on_crash is not supported"),
        ({"type": "notebook"}, "type is not supported"),
        (
            {"schedules": [{"cron": "61 * * * *"}]},
            "schedules[0].cron must be a cron expression with values in range",
        ),
        # an outside audit: five fields, one out of range, was called "not 5-field"
        ({"schedules": [{"cron": "0 24 * * *"}]}, "hour 0-23"),
        ({"schedules": [{"cron": "*/0 * * * *"}]}, "a step */N with N >= 1"),
        (
            {"schedules": [{"cron": "* * * *"}]},
            "5-field cron expression (minute hour day month weekday), not 4 fields",
        ),
        ({"schedules": [{"interval_seconds": 0}]}, "interval_seconds must be an integer >= 1"),
        # found by an outside audit: each of these was taken, one value silently dropped
        ({"schedules": {}}, "schedules must be a list of objects"),
        ({"schedules": False}, "schedules must be a list of objects"),
        (
            {"schedules": [{"cron": "0 * * * *", "schedule_cron": "5 * * * *"}]},
            "schedules[0].cron and schedule_cron (Fast-Flow's name) differ",
        ),
        (
            {"schedules": [{"interval_seconds": 60, "schedule_interval_seconds": 30}]},
            "schedules[0].interval_seconds and schedule_interval_seconds",
        ),
        (
            {"schedules": [{"cron": "* * * * *", "env": {"A": "1"}, "default_env": {"A": "2"}}]},
            "schedules[0].env and default_env (Fast-Flow's name) give 'A' different values",
        ),
        (
            {"schedules": [{"cron": "* * * * *", "env": {}, "default_env": {"BAD NAME": "x"}}]},
            "schedules[0].default_env",
        ),
        ({"description": {"text": "x"}}, "description must be a string (got a dict)"),
        ({"description": False}, "description must be a string (got a bool)"),
        # found by an outside audit: 10**12 passed and overflowed every date later
        ({"schedules": [{"interval_seconds": 10**12}]}, "interval_seconds must be at most"),
        ({"schedule_interval_seconds": 10**10}, "schedule_interval_seconds must be at most"),
        ({"schedules": [{"cron": "* * * * *", "interval_seconds": 5}]}, "exclude each other"),
        ({"schedules": [{"timezone": "UTC"}]}, "cron or interval_seconds is required"),
        ({"schedules": [{"cron": "* * * * *", "timezone": "Mars/Olympus"}]}, "IANA time zone"),
        ({"schedules": [{"cron": "* * * * *", "start": "yesterday"}]}, "ISO 8601"),
        ({"schedules": [{"cron": "* * * * *", "colour": "red"}]}, "schedules[0].colour"),
        ({"max_instances": 0}, "max_instances must be an integer >= 1"),
        ({"on_overlap": "wait"}, "on_overlap must be 'skip' or 'queue'"),
        ({"retries": {"max": 1e9}}, "retries.max must be an integer"),
        ({"retries": {"max": 1000}}, "at most 100"),
        ({"retries": {"max": 2, "backoff": "random"}}, "retries.backoff"),
        ({"triggers": {"on_success": "b"}}, "triggers.on_success must be a list"),
        ({"downstream_triggers": [{"pipeline": "b", "on_route": "x"}]}, "on_route"),
        ({"notify": {"on_failure": "yes"}}, "notify.on_failure must be true or false"),
        ({"timeout": float("nan")}, "timeout must be a number"),
        # found by an outside audit: these crashed with AttributeError (and killed the
        # server's schedule thread) instead of naming the key
        ({"schedules": ["*/5 * * * *"]}, "schedules must be a list of objects"),
        ({"schedules": "*/5 * * * *"}, "schedules must be a list of objects"),
        ({"schedules": {"cron": "* * * * *"}}, "schedules must be a list of objects"),
        ({"schedules": [None]}, "schedules must be a list of objects"),
        # found by an outside audit: JSON reads 3.10 as 3.1, which was then looked for
        ({"python": 3.10}, 'python must be written as a string such as "3.10"'),
        ({"python_version": 3.2}, "python_version must be written as a string"),
        # found by an outside audit: a native key and its Fast-Flow alias together — one
        # of them was silently ignored (retries over retry_attempts, schedules over
        # schedule_cron)
        (
            {"retries": {"max": 1}, "retry_attempts": 5},
            "retries and retry_attempts (Fast-Flow's names) both say how to retry",
        ),
        (
            {"retries": {"max": 1}, "retry_strategy": {"type": "fixed_delay", "delay": 1}},
            "retry_strategy",
        ),
        (
            {"schedules": [{"cron": "* * * * *"}], "schedule_cron": "0 * * * *"},
            "schedules and schedule_cron (one schedule in Fast-Flow's top-level keys)",
        ),
        (
            {"env": {"MODE": "full", "A": "1"}, "default_env": {"MODE": "delta", "A": "1"}},
            "env and default_env (Fast-Flow's name) give 'MODE' different values",
        ),
        (
            {
                "schedules": [{"id": "once", "cron": "* * * * *"}],
                "run_once_at": "2027-01-01T00:00:00Z",
            },
            "the id 'once', which run_once_at uses",
        ),
    ],
)
def test_bad_values_name_the_key(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidPipelineConfig) as err:
        parse(json.loads(json.dumps(data)) if "nan" not in str(data) else data, WHERE)
    assert needle in str(err.value) and str(WHERE) in str(err.value)


@pytest.mark.parametrize(
    "key", [["ffwh_TheRealKey-0123456789abcdef"], {"k": "ffwh_TheRealKey"}, 12345678901234567890]
)
def test_a_wrongly_typed_webhook_key_is_not_shown_in_the_error(key: Any) -> None:
    """Found by an outside audit: the error (shown on the pipeline page to viewers)
    printed the key the operator meant to use."""
    for data in ({"webhook_key": key}, {"schedules": [{"cron": "* * * * *", "webhook_key": key}]}):
        with pytest.raises(InvalidPipelineConfig) as err:
            parse(data, WHERE)
        assert "webhook_key must be a non-empty string" in str(err.value)
        assert "TheRealKey" not in str(err.value) and "1234567890" not in str(err.value)


def test_python_versions_written_as_numbers_that_cannot_be_misread_are_taken() -> None:
    assert parse({"python": 3.11}, WHERE).python == "3.11"
    assert parse({"python": 3.9}, WHERE).python == "3.9"
    assert parse({"python": "3.10"}, WHERE).python == "3.10"


def test_aliases_that_agree_are_taken_together() -> None:
    """The same variable with the same value in env and default_env, and run_once_at next
    to schedules[] (it was dropped when schedules[] was given), are not conflicts."""
    config = parse(
        {
            "env": {"MODE": "full", "A": "1"},
            "default_env": {"A": "1", "B": "2"},
            "schedules": [{"cron": "0 * * * *"}],
            "run_once_at": "2027-01-01T00:00:00Z",
        },
        WHERE,
    )
    assert config.env == {"MODE": "full", "A": "1", "B": "2"}
    assert [s.key for s in config.schedules] == ["0", "once"]


def test_a_zero_given_is_kept_and_aliases_that_agree_in_a_schedule_are_taken() -> None:
    """An outside audit: ``initial_delay: 0`` became 60 s (``0 or 60``)."""
    data = {
        "retry_attempts": 2,
        "retry_strategy": {"type": "exponential_backoff", "initial_delay": 0},
        "schedules": [{"cron": "0 * * * *", "schedule_cron": "0 * * * *", "env": {"A": "1"}}],
    }
    cfg = parse(data, WHERE)
    assert cfg.retries.delay_seconds == 0 and cfg.retries.backoff == "exponential"
    assert cfg.schedules[0].cron == "0 * * * *" and cfg.schedules[0].env == {"A": "1"}
    assert parse({"description": None}, WHERE).description == ""


def test_aliases_that_mean_the_same_written_differently_agree() -> None:
    """A review: the native key and its Fast-Flow alias were compared as raw JSON, so the
    same instant in two notations (or a cron with other spacing) was refused."""
    spec = parse(
        {
            "schedules": [
                {
                    "cron": "0  9 * * *",
                    "schedule_cron": "0 9 * * *",
                    "start": "2026-01-01T00:00:00Z",
                    "schedule_start": "2026-01-01T01:00:00+01:00",
                    "end": "2027-01-01T00:00:00",
                    "schedule_end": "2027-01-01T00:00:00+00:00",
                }
            ]
        },
        WHERE,
    ).schedules[0]
    assert spec.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert spec.end == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidPipelineConfig, match="differ: keep one"):
        parse(
            {
                "schedules": [
                    {"cron": "0 9 * * *", "start": "2026-01-01", "schedule_start": "2026-01-02"}
                ]
            },
            WHERE,
        )
    with pytest.raises(InvalidPipelineConfig, match="must be an ISO 8601 time"):
        parse(
            {"schedules": [{"cron": "0 9 * * *", "start": "2026-01-01", "schedule_start": "soon"}]},
            WHERE,
        )
