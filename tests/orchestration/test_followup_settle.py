"""A ``pipeline.json`` caught half-saved as a run ends does not cost the run its retry:
the follow-up reads it again for a few seconds (an outside audit had an editor's save
land as a run ended, and the retry and triggers were dropped for good)."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import pytest

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from fastflow.orchestration import followup
from fastflow.orchestration.followup import Ended, FollowUp
from fastflow.runs import pipelines
from tests.conftest import MakePipeline, wait_until

CONFIG = '{"retries": {"max": 1, "delay_seconds": 0}}'


def test_a_half_saved_pipeline_json_does_not_drop_the_retry(
    app: Context, make_pipeline: MakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_pipeline("pay", "raise SystemExit(1)\n", CONFIG)
    (folder / "pipeline.json").write_text('{"retries": {"max": 1, "del', encoding="utf-8")
    caplog.set_level(logging.INFO, logger="fastflow.orchestration")
    ended = Ended(uuid.uuid4(), "pay", "FAILED", 1, None)
    result: list[FollowUp] = []
    worker = threading.Thread(
        target=lambda: result.append(
            followup.follow_up(app.db, Path(app.settings.pipelines_dir), ended)
        )
    )
    worker.start()
    try:
        wait_until(lambda: "reading it again" in caplog.text, 10, "the first failed read")
        (folder / "pipeline.json").write_text(CONFIG, encoding="utf-8")  # the save completes
    finally:
        worker.join(30)
    (done,) = result
    assert done.retry is not None
    with app.db.session() as s:
        retry = s.get(PipelineRun, done.retry)
        assert retry is not None and (retry.attempt, retry.status) == (2, "QUEUED")


def test_a_pipeline_json_that_stays_invalid_gives_up_after_the_settle_time(
    app: Context, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_pipeline("pay", "raise SystemExit(1)\n", CONFIG)
    (folder / "pipeline.json").write_text('{"bogus": 1}', encoding="utf-8")
    monkeypatch.setattr(pipelines, "SETTLE_S", 0.3)
    done = followup.follow_up(
        app.db, Path(app.settings.pipelines_dir), Ended(uuid.uuid4(), "pay", "FAILED", 1, None)
    )
    assert done == FollowUp()
