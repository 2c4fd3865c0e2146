"""`fastflow pipelines check`: native and Fast-Flow pipeline.json forms are clean; an
unknown key, an unknown trigger target and a trigger cycle are errors (exit 1)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

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


def test_a_trigger_naming_a_schedule_the_target_lacks_is_an_error(
    make_pipeline: MakePipeline, cli: Cli
) -> None:
    make_pipeline("down", config='{"schedules": [{"id": "nightly", "cron": "0 3 * * *"}]}')
    good = {"pipeline": "down", "run_config_id": "nightly"}
    make_pipeline("up", config=json.dumps({"downstream_triggers": [good]}))
    assert cli("pipelines", "check").returncode == 0
    bad = {"pipeline": "down", "run_config_id": "weekly"}
    make_pipeline("typo", config=json.dumps({"downstream_triggers": [bad]}))
    res = cli("pipelines", "check")
    assert res.returncode == 1
    assert "triggers 'down' with run_config_id 'weekly', which is not the id of a schedule" in (
        res.stderr
    )


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


def test_every_cycle_a_broken_link_and_a_silent_cron_are_reported(
    make_pipeline: MakePipeline, cli: Cli, tmp_path: Path
) -> None:
    """Found by an outside audit: only the first trigger cycle was reported (``self ->
    self`` hid behind ``a -> b -> a``), a pipeline.json linking to nothing counted as no
    settings, and a cron that matches no date was accepted without a word."""
    make_pipeline("a", config='{"triggers": {"on_success": ["b"]}}')
    make_pipeline("b", config='{"triggers": {"on_success": ["a"]}}')
    make_pipeline("me", config='{"triggers": {"on_failure": ["me"]}}')
    make_pipeline("x", config='{"triggers": {"on_success": ["y"]}}')
    make_pipeline("y", config='{"triggers": {"on_success": ["z"]}}')
    make_pipeline("z", config='{"triggers": {"on_success": ["x", "a"]}}')
    make_pipeline("feb30", config='{"schedules": [{"id": "never", "cron": "0 0 30 2 *"}]}')
    linked = make_pipeline("linked")
    (linked / "pipeline.json").symlink_to(tmp_path / "gone.json")
    res = cli("pipelines", "check")
    assert res.returncode == 1
    err = res.stderr
    assert "trigger cycle refused: a -> b -> a" in err
    assert "trigger cycle refused: me -> me" in err
    assert "trigger cycle refused: x -> y -> z -> x" in err
    assert "link to a file that does not exist" in err
    assert "schedule 'never': cron '0 0 30 2 *' matches no date; it never fires" in err


def test_a_fifo_a_device_or_a_huge_pipeline_json_is_refused_without_reading_it(
    make_pipeline: MakePipeline, cli: Cli
) -> None:
    """An outside audit: a FIFO as pipeline.json hung ``pipelines check`` (and the server,
    health included) for ever, and a link to /dev/zero read without bound."""
    import os

    from fastflow.runs.pipelines import MAX_CONFIG_BYTES

    os.mkfifo(make_pipeline("piped") / "pipeline.json")
    (make_pipeline("zeros") / "pipeline.json").symlink_to("/dev/zero")
    big = make_pipeline("big") / "pipeline.json"
    big.write_text('{"description": "' + "x" * MAX_CONFIG_BYTES + '"}')
    make_pipeline("fine", config='{"description": "ok"}')
    res = cli("pipelines", "check", "--json", timeout=30)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    messages = {p["pipeline"]: p["message"] for p in report["problems"]}
    assert "not a regular file" in messages["piped"]
    assert "not a regular file" in messages["zeros"]
    assert f"more than the {MAX_CONFIG_BYTES} allowed" in messages["big"]
    assert "fine" not in messages


def test_trigger_cycles_finds_one_cycle_per_group() -> None:
    from fastflow.runs.pipelines import trigger_cycles

    assert trigger_cycles({"a": ("b",), "b": ("c",), "c": ()}) == []
    assert trigger_cycles({"a": ("a",)}) == [["a", "a"]]
    graph = {"a": ("b", "c"), "b": ("a",), "c": ("d",), "d": ("c", "e"), "e": ()}
    assert trigger_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]
    assert trigger_cycles({"a": ("ghost",)}) == []


def test_nan_a_key_given_twice_and_absurd_nesting_are_errors_not_tracebacks(
    make_pipeline: MakePipeline, cli: Cli
) -> None:
    """An outside audit: a deeply nested pipeline.json gave RecursionError tracebacks, a
    key given twice silently kept the last value, ``NaN`` passed as a number."""
    make_pipeline("twice", config='{"max_instances": 1, "max_instances": 5}')
    make_pipeline("nan", config='{"timeout": NaN}')
    make_pipeline("deep", config='{"env": ' + "[" * 100_000 + "]" * 100_000 + "}")
    make_pipeline("fine", config='{"max_instances": 2}')
    res = cli("pipelines", "check")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "twice:" in res.stderr and "the key 'max_instances' is given twice" in res.stderr
    assert "nan:" in res.stderr and "NaN is not a JSON value" in res.stderr
    assert "deep:" in res.stderr and "nested too deeply" in res.stderr
    assert "fine:" not in res.stderr
    run = cli("run", "deep")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "nested too deeply" in run.stderr


_opened: list[str] | None = None


def _note_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _opened is not None and args and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


def test_a_device_or_fifo_as_pipeline_json_is_never_opened(make_pipeline: MakePipeline) -> None:
    """A review: a device was opened (O_NONBLOCK) before it was refused; opening a device
    can have effects of its own. Every open is seen by an audit hook."""
    import sys

    from fastflow.errors import InvalidPipelineConfig
    from fastflow.runs import pipelines

    global _opened
    fifo = make_pipeline("piped") / "pipeline.json"
    os.mkfifo(fifo)
    zeros = make_pipeline("zeros") / "pipeline.json"
    zeros.symlink_to("/dev/zero")
    sys.addaudithook(_note_opens)  # (hooks stay: it records only while _opened is a list)
    _opened = []
    try:
        for name in ("piped", "zeros"):
            with pytest.raises(InvalidPipelineConfig, match="not a regular file"):
                pipelines.load(fifo.parent.parent, name)
        seen = list(_opened)
    finally:
        _opened = None
    assert not [p for p in seen if p.endswith("pipeline.json") or p == "/dev/zero"], seen
