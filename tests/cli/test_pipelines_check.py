"""`fastflow pipelines check`: native and Fast-Flow pipeline.json forms are clean; an
unknown key, an unknown trigger target and a trigger cycle are errors (exit 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess

from tests.conftest import MakePipeline

Cli = Callable[..., CompletedProcess[str]]

FAST_FLOW = {
    "description": "Daily report",
    "schedule_cron": "0 9 * * *",
    "retry_attempts": 2,
    "retry_strategy": {"type": "fixed_delay", "delay": 1},
    "max_instances": 1,
    "downstream_triggers": [{"pipeline": "native", "on_success": True}],
    "default_env": {"LOG_LEVEL": "INFO"},
}
NATIVE = {
    "schedules": [{"interval_seconds": 60}],
    "retries": {"max": 2, "delay_seconds": 1},
    "triggers": {"on_failure": ["alarm"]},
}


def test_native_and_fast_flow_forms_are_clean(make_pipeline: MakePipeline, cli: Cli) -> None:
    make_pipeline("fastflow_style", config=json.dumps(FAST_FLOW))
    make_pipeline("native", config=json.dumps(NATIVE))
    make_pipeline("alarm")
    res = cli("pipelines", "check", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert sorted(report["pipelines"]) == ["alarm", "fastflow_style", "native"]
    listing = cli("pipelines", "--json")  # the listing still works as before
    assert {p["name"] for p in json.loads(listing.stdout)} == set(report["pipelines"])


def test_unknown_key_unknown_target_and_cycle_are_errors(
    make_pipeline: MakePipeline, cli: Cli
) -> None:
    make_pipeline("typo", config='{"schedule_crn": "0 9 * * *"}')
    make_pipeline("a", config='{"triggers": {"on_success": ["b"]}}')
    make_pipeline("b", config='{"downstream_triggers": [{"pipeline": "a"}]}')
    make_pipeline("c", config='{"triggers": {"on_failure": ["ghost"]}}')
    res = cli("pipelines", "check")
    assert res.returncode == 1
    assert "error: typo:" in res.stderr and "schedule_crn is not a known" in res.stderr
    assert "trigger cycle refused: a -> b -> a" in res.stderr
    assert "triggers unknown pipeline 'ghost'" in res.stderr


def test_webhook_key_in_a_file_is_a_warning_not_an_error(
    make_pipeline: MakePipeline, cli: Cli
) -> None:
    make_pipeline("hooked", config='{"webhook_key": "abcdef123456-long-enough"}')
    res = cli("pipelines", "check", "--json")
    assert res.returncode == 0
    (problem,) = json.loads(res.stdout)["problems"]
    assert problem["level"] == "warning" and "secret" in problem["message"]
    assert "abcdef123456" not in res.stdout
    # found by an outside audit: a one-character key was accepted without a word
    make_pipeline("hooked", config='{"webhook_key": "x"}')
    res = cli("pipelines", "check", "--json")
    assert res.returncode == 0
    problems = json.loads(res.stdout)["problems"]
    assert [p["level"] for p in problems] == ["warning", "warning"]
    assert "is 1 characters long" in problems[1]["message"] and "guessed" in problems[1]["message"]
