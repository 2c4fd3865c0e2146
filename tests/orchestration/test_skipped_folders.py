"""A pipeline folder that ``serve`` and ``fastflow schedules`` skip (invalid name or
``pipeline.json``) is no longer skipped without a word (outside audit, 2026-12-04: its
schedules silently stopped): a warning in the server's log, a system incident (bell,
e-mail, Teams) once it stays broken, resolved when it loads again; ``fastflow
schedules`` names it on stderr and exits 1. Real SMTP server and Teams endpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fastflow.context import Context
from fastflow.notify.system import open_incidents
from fastflow.orchestration.skipped_folders import KIND, SkippedFolders
from fastflow.orchestration.ticker import ScheduleLoop
from fastflow.runs import pipelines
from tests.conftest import MakePipeline, run_cli
from tests.notify.test_system_incidents import WAIT, World, world  # noqa: F401 (a fixture)

GOOD = '{"schedules": [{"interval_seconds": 60}]}'
BAD = '{"schedules": [{"interval_seconds": 60}], "retrys": 2}'


def _scan(ctx: Context) -> dict[str, str]:
    return pipelines.scan(ctx.settings.pipelines_dir)[1]


def test_a_skipped_folder_is_logged_then_announced_once_then_resolved(
    world: World,  # noqa: F811 - the fixture imported above
    make_pipeline: MakePipeline,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx, smtp_server, teams_endpoint = world.ctx, world.smtp, world.teams
    make_pipeline("good", config=GOOD)
    bad = make_pipeline("bad", config=BAD)
    folders = SkippedFolders(ctx)

    with caplog.at_level(logging.WARNING, logger="fastflow.orchestration.skipped_folders"):
        folders.update(_scan(ctx))  # first sight: a warning, not yet an incident
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "'bad' is skipped" in warning and "retrys" in warning
    assert open_incidents(ctx, KIND) == []

    folders.update(_scan(ctx))  # still broken at the next scan: one incident
    (incident,) = open_incidents(ctx, KIND)
    assert incident["key"] == "bad" and "retrys" in incident["detail"]
    (mail,) = smtp_server.wait_for(1, WAIT)
    assert "'bad' is skipped" in mail.message["Subject"]
    assert "retrys" in json.dumps(teams_endpoint.wait_for(1, WAIT)[0].json)
    folders.update(_scan(ctx))
    folders.update(_scan(ctx))
    assert len(open_incidents(ctx, KIND)) == 1

    # fixed, and seen by a process that did not open the incident (a restart)
    (bad / "pipeline.json").write_text(GOOD)
    SkippedFolders(ctx).update(_scan(ctx))
    assert open_incidents(ctx, KIND) == []
    mails = smtp_server.wait_for(2, WAIT)
    assert len(mails) == 2 and mails[1].message["Subject"].startswith("[fastflow] Resolved:")
    assert len(teams_endpoint.wait_for(2, WAIT)) == 2


def test_a_removed_folder_resolves_its_incident(
    world: World,  # noqa: F811 - the fixture imported above
    make_pipeline: MakePipeline,
) -> None:
    ctx, smtp_server = world.ctx, world.smtp
    bad = make_pipeline("bad", config="{not json")
    folders = SkippedFolders(ctx)
    folders.update(_scan(ctx))
    folders.update(_scan(ctx))
    assert [i["key"] for i in open_incidents(ctx, KIND)] == ["bad"]

    (bad / "main.py").unlink()  # no main.py: not a pipeline folder any more
    folders.update(_scan(ctx))
    assert open_incidents(ctx, KIND) == []
    assert len(smtp_server.wait_for(2, WAIT)) == 2


def test_the_schedule_loop_reports_what_it_skips(
    app: Context, make_pipeline: MakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    make_pipeline("good", config=GOOD)
    make_pipeline("bad", config=BAD)
    with caplog.at_level(logging.WARNING, logger="fastflow.orchestration.skipped_folders"):
        assert [p.name for p in ScheduleLoop(app).pipelines()] == ["good"]
    assert any("'bad' is skipped" in r.getMessage() for r in caplog.records)


def test_fastflow_schedules_names_a_skipped_folder_and_exits_1(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("good", config=GOOD)
    clean = run_cli("schedules", "--json")
    assert clean.returncode == 0 and "warning" not in clean.stderr, clean.stderr
    make_pipeline("bad", config=BAD)
    (Path(ff_env["PIPELINES_DIR"]) / "odd name ").mkdir()
    (Path(ff_env["PIPELINES_DIR"]) / "odd name " / "main.py").write_text("print(1)\n")

    res = run_cli("schedules", "--json")

    assert res.returncode == 1
    assert [r["pipeline_name"] for r in json.loads(res.stdout)] == ["good"]
    lines = [x for x in res.stderr.splitlines() if x.startswith("warning")]
    assert len(lines) == 2
    assert lines[0].startswith("warning: pipeline folder 'bad' is skipped") and "retrys" in lines[0]
    assert lines[1].startswith("warning: pipeline folder 'odd name ' is skipped")
    plain = run_cli("schedules")
    assert plain.returncode == 1 and plain.stdout.startswith("good\tevery 60 s\t")
