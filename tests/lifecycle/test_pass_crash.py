"""A cleanup pass that crashes, for whatever reason, is recorded and notified like a failed
backup (issue 13): a failure without run id (the bell), e-mail and Teams through the usual
path; ``fastflow cleanup`` exits 1 with one line; a forced pass answers with the error.

The faults are real: a run folder in LOGS_DIR that is a file (the planner's ``stat`` of
the run's log raises ``NotADirectoryError``), and a pass lock path that is a folder (the
pass dies before it has a pass row).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fastflow import accounts
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.lifecycle import records
from fastflow.server import create_app
from tests.conftest import run_cli, wait_until
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint
from tests.seeding import seed_run

CRASH = "the cleanup pass failed: NotADirectoryError"


@dataclass
class Broken:
    ctx: Context
    env: dict[str, str]
    smtp: SmtpCapture
    teams: TeamsEndpoint
    run_dir: Path

    def repair(self) -> None:
        self.run_dir.unlink()


@pytest.fixture
def broken(
    ff_env: dict[str, str],
    smtp_server: SmtpCapture,
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Broken]:
    """A run without a recorded log size whose run folder is a plain file, with
    ``LOG_MAX_SIZE_MB`` set (so that the planner measures the log), e-mail and Teams on."""
    env = {
        "LOG_MAX_SIZE_MB": "1",
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": teams_endpoint.url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    run = seed_run(ctx, "etl", datetime(2026, 1, 1, tzinfo=UTC), write_log=False)
    shutil.rmtree(run.log.parent)
    run.log.parent.write_text("a file where the run's folder belongs\n")
    try:
        yield Broken(ctx, {**ff_env, **env}, smtp_server, teams_endpoint, run.log.parent)
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def _pass_failures(ctx: Context) -> list[dict[str, object]]:
    return [f for f in records.recent_failures(ctx) if f["run_id"] is None]


def test_cli_pass_that_crashes_is_one_line_recorded_and_notified(broken: Broken) -> None:
    res = run_cli("cleanup")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"fastflow: {CRASH}: ")
    (failure,) = _pass_failures(broken.ctx)
    assert str(failure["error_message"]).startswith(CRASH)
    assert failure["resolved_at"] is None
    (last,) = records.recent_passes(broken.ctx, 1)
    assert last["finished_at"] is not None and str(last["error"]).startswith(CRASH)
    (mail,) = broken.smtp.wait_for(1, timeout=30)
    assert "cleanup pass failed" in str(mail.message["Subject"])
    wait_until(lambda: broken.teams.posts, 30, "the Teams card")
    assert "cleanup pass failed" in json.dumps(broken.teams.posts[0].json)


def test_cli_json_and_dry_run_of_a_crashing_pass(broken: Broken) -> None:
    dry = run_cli("cleanup", "--dry-run")
    assert dry.returncode == 1 and "Traceback" not in dry.stderr
    assert dry.stderr.strip().splitlines() == [
        line for line in dry.stderr.strip().splitlines() if "the cleanup plan failed" in line
    ]
    assert "NotADirectoryError" in dry.stderr
    assert _pass_failures(broken.ctx) == []  # a dry run changes and records nothing
    res = run_cli("cleanup", "--json")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    summary = json.loads(res.stdout)
    assert summary["error"].startswith(CRASH) and summary["backup_failures"] == 1
    assert summary["failures"][0]["run_id"] is None


def test_forced_pass_that_crashes_answers_with_the_error_and_notifies(broken: Broken) -> None:
    client = TestClient(create_app(broken.ctx, schedule=False))
    admin = {"Authorization": f"Bearer {accounts.create_token(broken.ctx.db, 'a', 'admin')}"}
    res = client.post("/api/settings/cleanup/force", headers=admin)
    assert res.status_code == 200, res.text
    summary = res.json()
    assert summary["error"].startswith(CRASH) and summary["backup_failures"] == 1
    shown = client.get("/api/settings/backup-failures", headers=admin).json()["failures"]
    assert [f["error_message"] for f in shown if f["run_id"] is None] == [summary["error"]]
    wait_until(lambda: broken.teams.posts, 30, "the Teams card")
    broken.smtp.wait_for(1, timeout=30)
    # fixed: the next pass is complete, the failure resolves and the recovery is announced
    broken.repair()
    again = client.post("/api/settings/cleanup/force", headers=admin).json()
    assert again["error"] is None and again["backup_failures"] == 0
    assert all(f["resolved_at"] for f in _pass_failures(broken.ctx))
    wait_until(lambda: len(broken.teams.posts) >= 2, 30, "the recovery card")


def test_a_pass_that_dies_before_its_pass_row_is_recorded_too(broken: Broken) -> None:
    broken.repair()
    database = broken.ctx.settings.database_url.removeprefix("sqlite:///")
    Path(database).with_suffix(".cleanup.lock").mkdir()  # the pass lock cannot be opened
    res = run_cli("cleanup")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("fastflow: the cleanup pass failed: IsADirectoryError")
    assert len(_pass_failures(broken.ctx)) == 1
    broken.smtp.wait_for(1, timeout=30)
    # the server's pass runs in a child process, which dies the same way
    client = TestClient(create_app(broken.ctx, schedule=False))
    admin = {"Authorization": f"Bearer {accounts.create_token(broken.ctx.db, 'a', 'admin')}"}
    res_api = client.post("/api/settings/cleanup/force", headers=admin)
    assert res_api.status_code == 200, res_api.text
    assert "IsADirectoryError" in res_api.json()["error"]
    assert len(_pass_failures(broken.ctx)) == 2
    passes = client.get("/api/settings/cleanup/passes", headers=admin).json()
    assert passes[0]["trigger"] == "api" and "IsADirectoryError" in passes[0]["error"]
