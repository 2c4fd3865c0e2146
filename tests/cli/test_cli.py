"""The fastflow command, run as a real subprocess."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from fastflow.context import Context
from tests.conftest import RUN_FIELDS, MakePipeline
from tests.harness.fixtures import S3Env

Cli = Callable[..., CompletedProcess[str]]


def test_run_success_prints_run_id_last(
    cli: Cli, make_pipeline: MakePipeline, ff_env: dict[str, str]
) -> None:
    make_pipeline("ok", "print('fine')\n")
    res = cli("run", "ok")
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    uuid.UUID(run_id)
    assert (Path(ff_env["LOGS_DIR"]) / "ok" / run_id / "run.log").exists()
    assert (Path(ff_env["LOGS_DIR"]) / "ok" / run_id / "metrics.jsonl").exists()
    assert "SUCCESS" in res.stderr


def test_run_failure_exits_1(cli: Cli, make_pipeline: MakePipeline) -> None:
    make_pipeline("bad", "raise SystemExit(4)\n")
    res = cli("run", "bad")
    assert res.returncode == 1
    uuid.UUID(res.stdout.strip().splitlines()[-1])
    assert "FAILED" in res.stderr and "exit code 4" in res.stderr


def test_run_unknown_pipeline(cli: Cli, ff_env: dict[str, str]) -> None:
    res = cli("run", "ghost")
    assert res.returncode == 1
    assert "pipeline 'ghost' not found" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden"])
def test_run_rejects_bad_names(cli: Cli, ff_env: dict[str, str], name: str) -> None:
    res = cli("run", name)
    assert res.returncode == 1
    assert "pipeline name" in res.stderr and "Traceback" not in res.stderr
    assert not (Path(ff_env["LOGS_DIR"]).exists() and any(Path(ff_env["LOGS_DIR"]).iterdir()))


def test_runs_json_and_table(cli: Cli, make_pipeline: MakePipeline) -> None:
    make_pipeline("a", "print(1)\n")
    make_pipeline("b b", "raise SystemExit(1)\n")
    first = cli("run", "a").stdout.split()[-1]
    second = cli("run", "b b").stdout.split()[-1]
    res = cli("runs", "--json")
    assert res.returncode == 0
    rows = json.loads(res.stdout)
    assert [r["id"] for r in rows] == [second, first]  # newest first
    assert all(set(r) >= RUN_FIELDS for r in rows)
    assert rows[0]["status"] == "FAILED" and rows[0]["exit_code"] == 1
    # by hand: issue 11's list is manual, schedule, webhook, upstream, retry, api
    assert rows[1]["triggered_by"] == "manual"
    only_a = json.loads(cli("runs", "--pipeline", "a", "--json").stdout)
    assert [r["id"] for r in only_a] == [first]
    assert len(json.loads(cli("runs", "--limit", "1", "--json").stdout)) == 1
    table = cli("runs").stdout
    assert first in table and second in table


def test_logs_prints_the_log(cli: Cli, make_pipeline: MakePipeline) -> None:
    make_pipeline("talk", "print('äöü line one')\nprint('line two')\n")
    run_id = cli("run", "talk").stdout.split()[-1]
    res = cli("logs", run_id)
    assert res.returncode == 0
    assert res.stdout.endswith("] line two\n") and "äöü line one" in res.stdout


def test_logs_unknown_and_malformed_ids(cli: Cli, ff_env: dict[str, str]) -> None:
    res = cli("logs", str(uuid.uuid4()))
    assert res.returncode == 1 and "not found" in res.stderr
    res = cli("logs", "not-a-uuid")
    assert res.returncode == 1 and "not a valid run id" in res.stderr


def test_pipelines_lists(cli: Cli, make_pipeline: MakePipeline) -> None:
    make_pipeline("one", config='{"description": "first"}')
    make_pipeline("zwei")
    res = cli("pipelines")
    assert res.stdout.splitlines() == ["one\tfirst", "zwei\t"]
    assert [p["name"] for p in json.loads(cli("pipelines", "--json").stdout)] == ["one", "zwei"]


@pytest.mark.parametrize(
    "command", [["runs"], ["run", "x"], ["logs", "x"], ["pipelines"], ["serve"], ["cleanup"]]
)
@pytest.mark.parametrize(
    ("var", "value"),
    [("LOG_MAX_SIZE_MB", "abc"), ("LOG_RETENTION_RUNS", "-1"), ("CLEANUP_SCHEDULE", "bad")],
)
def test_invalid_config_stops_every_command(
    cli: Cli, ff_env: dict[str, str], command: list[str], var: str, value: str
) -> None:
    res = cli(*command, env={var: value})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert var in lines[0] and value in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("where", ["file", "below-a-file", "/dev/null"])
def test_a_data_dir_that_cannot_be_a_folder_stops_with_exit_2(
    cli: Cli, ff_env: dict[str, str], tmp_path: Path, where: str
) -> None:
    """``DATA_DIR`` naming a file, a path below one, or a device: one line naming the
    variable and the path, exit 2 (before, an outside audit found, a traceback)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    value = {"file": str(a_file), "below-a-file": str(a_file / "sub"), "/dev/null": "/dev/null"}
    database = tmp_path / "elsewhere" / "fastflow.db"
    database.parent.mkdir()
    res = cli("runs", env={"DATA_DIR": value[where], "DATABASE_URL": f"sqlite:///{database}"})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"DATA_DIR={value[where]}: cannot be used as a folder" in res.stderr
    assert not database.exists()  # refused before anything was created (an outside audit)
    assert "creating a new database" not in res.stderr
    assert a_file.read_text() == "x"


def test_invalid_secret_is_masked_on_stderr(cli: Cli, ff_env: dict[str, str]) -> None:
    res = cli("runs", env={"TEAMS_WEBHOOK_URL": "nohost/topsecret"})
    assert res.returncode == 2
    assert "TEAMS_WEBHOOK_URL" in res.stderr and "topsecret" not in res.stderr


# --- cleanup and logs with a real S3 server ------------------------------------------------


def _seed_cli_runs(cli: Cli, make_pipeline: MakePipeline, n: int) -> list[str]:
    make_pipeline("job", "import os\nprint('output of', os.environ['FASTFLOW_RUN_ID'])\n")
    return [cli("run", "job").stdout.split()[-1] for _ in range(n)]


def test_cleanup_json_archives_and_logs_reads_back(
    cli: Cli, make_pipeline: MakePipeline, s3: S3Env
) -> None:
    ids = _seed_cli_runs(cli, make_pipeline, 3)
    env = {**s3.env(), "LOG_RETENTION_RUNS": "1"}
    res = cli("cleanup", "--json", env=env)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    for key in (
        "deleted_runs",
        "deleted_logs",
        "deleted_metrics",
        "truncated_logs",
        "archived_runs",
        "backup_failures",
        "skipped_runs",
        "bytes_archived",
        "duration_s",
    ):
        assert key in summary
    assert summary["archived_runs"] == 2 and summary["deleted_runs"] == 2
    assert summary["deleted_logs"] == 2 and summary["deleted_metrics"] == 2
    assert summary["bytes_archived"] > 0 and summary["backup_failures"] == 0
    remaining = [r["id"] for r in json.loads(cli("runs", "--json").stdout)]
    assert remaining == [ids[-1]]
    # the oldest run's row and files are gone; its log comes back from the archive
    res = cli("logs", ids[0], env=env)
    assert res.returncode == 0, res.stderr
    assert f"output of {ids[0]}" in res.stdout
    assert "read back from the archive" in res.stderr


def test_cleanup_exit_1_when_backups_fail(cli: Cli, make_pipeline: MakePipeline, s3: S3Env) -> None:
    _seed_cli_runs(cli, make_pipeline, 2)
    s3.proxy.fail(500)
    res = cli("cleanup", "--json", env={**s3.env(), "LOG_RETENTION_RUNS": "1"})
    assert res.returncode == 1
    summary = json.loads(res.stdout)
    assert summary["backup_failures"] == 1 and summary["deleted_runs"] == 0
    assert s3.secret_key not in res.stdout + res.stderr


def test_cleanup_exit_2_when_s3_incomplete(cli: Cli, make_pipeline: MakePipeline) -> None:
    _seed_cli_runs(cli, make_pipeline, 2)
    res = cli(
        "cleanup", env={"S3_BACKUP_ENABLED": "true", "S3_BUCKET": "bkt", "LOG_RETENTION_RUNS": "1"}
    )
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "S3_ENDPOINT_URL" in last and "S3_ACCESS_KEY" in last
    assert "S3_SECRET_ACCESS_KEY" in last and "S3_BUCKET" not in last.split("missing")[1]
    assert len(json.loads(cli("runs", "--json").stdout)) == 2


def test_cleanup_exit_3_when_another_pass_runs(
    cli: Cli, make_pipeline: MakePipeline, app: Context
) -> None:
    from fastflow.lifecycle import records
    from fastflow.lifecycle.lock import PassLock

    with PassLock(app.db):
        _, started = records.open_pass(app.db, "api")  # the running pass's row
        res = cli("cleanup")
        as_json = cli("cleanup", "--json")
    assert res.returncode == 3
    assert "another cleanup pass is running" in res.stderr
    assert f"(started {started.isoformat()})" in res.stderr
    # --json: one object on stdout still (an outside audit found stdout empty), saying
    # when the running pass started, as the API's 409 does (it said null, another audit)
    assert as_json.returncode == 3
    answer = json.loads(as_json.stdout)
    assert answer["busy"] is True and "another cleanup pass is running" in answer["error"]
    assert answer["started_at"] == started.isoformat()


def test_cleanup_dry_run_prints_plan_and_changes_nothing(
    cli: Cli, make_pipeline: MakePipeline, s3: S3Env
) -> None:
    ids = _seed_cli_runs(cli, make_pipeline, 3)
    res = cli("cleanup", "--dry-run", env={**s3.env(), "LOG_RETENTION_RUNS": "1"})
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and all("archive_and_delete_run" in x for x in lines)
    assert ids[0] in res.stdout and ids[1] in res.stdout and ids[2] not in res.stdout
    assert "more than 1 finished runs" in res.stdout
    assert len(json.loads(cli("runs", "--json").stdout)) == 3
    assert s3.proxy.requests == []


def test_serve_answers_health(ff_env: dict[str, str]) -> None:
    import os

    import httpx

    from tests.harness.serve import fastflow_serve

    with fastflow_serve({**os.environ, **ff_env}) as url:
        res = httpx.get(url + "/api/health")
        assert res.status_code == 200 and res.json()["status"] == "ok"
        assert httpx.get(url + "/api/runs").status_code == 401
