"""A trigger cycle holds back only the triggers that lead into it: an outside audit found
that one cycle anywhere stopped every pipeline's triggers, and that the log named the
first cycle found instead of the one involved."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from fastflow.orchestration.followup import Ended, trigger_plan
from fastflow.runs import pipelines
from tests.conftest import MakePipeline


def _plan(pipelines_dir: Path, name: str) -> list[str]:
    pipeline = pipelines.load(pipelines_dir, name)
    ended = Ended(uuid.uuid4(), name, "SUCCESS", 1, None)
    return [q.pipeline_name for q in trigger_plan(pipelines_dir, pipeline, ended)]


def test_only_triggers_that_lead_into_a_cycle_are_held_back(
    ff_env: dict[str, str], make_pipeline: MakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    def triggers(*targets: str) -> str:
        return json.dumps({"triggers": {"on_success": list(targets)}})

    make_pipeline("a-extract", config=triggers("b-load"))
    make_pipeline("b-load")
    make_pipeline("a-cycle", config=triggers("b-cycle"))  # sorts first: the old log named it
    make_pipeline("b-cycle", config=triggers("a-cycle"))
    make_pipeline("x-ping", config=triggers("y-pong"))
    make_pipeline("y-pong", config=triggers("x-ping"))
    make_pipeline("z-feeder", config=triggers("x-ping", "b-load"))
    folder = Path(ff_env["PIPELINES_DIR"])
    caplog.set_level(logging.ERROR, logger="fastflow.orchestration")

    assert _plan(folder, "a-extract") == ["b-load"]
    assert caplog.text == ""

    assert _plan(folder, "x-ping") == []
    assert "x-ping -> y-pong -> x-ping" in caplog.text and "a-cycle" not in caplog.text
    caplog.clear()

    assert _plan(folder, "z-feeder") == []  # upstream of a cycle: held back as well
    assert "lead into the trigger cycle x-ping -> y-pong -> x-ping" in caplog.text


def test_cycle_reached_from_follows_the_whole_chain() -> None:
    graph = {
        "a": ("b",),
        "b": ("c",),
        "c": ("d", "e"),
        "d": ("c",),
        "e": (),
        "f": ("e",),
    }
    assert pipelines.cycle_reached_from(graph, "a") == ["c", "d", "c"]
    assert pipelines.cycle_reached_from(graph, "d") == ["c", "d", "c"]
    assert pipelines.cycle_reached_from(graph, "f") is None
    assert pipelines.cycle_reached_from(graph, "e") is None
    assert pipelines.cycle_reached_from({"s": ("s",)}, "s") == ["s", "s"]
