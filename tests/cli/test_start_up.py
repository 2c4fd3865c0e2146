"""What ``fastflow run`` loads (issue 14): a run of a trivial pipeline imports neither
the web stack nor the cloud, Docker or notification transports, nor Alembic when the
database is at its head; the garbage collector is back on (with the start-up's objects
frozen) while the run executes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

from tests.conftest import MakePipeline, run_cli

NOT_ON_THE_RUN_PATH = (
    "httpx",
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "docker",
    "smtplib",
    "alembic",
    "croniter",
    "sqlalchemy.dialects.postgresql",
    "fastflow.api",
    "fastflow.web",
    "fastflow.archive.s3",
    "fastflow.executors.docker",
)

# the real entry point, with a look at the process when the pipeline runs and at exit
PROBE = """
import atexit, gc, json, os, sys
seen = {}

def at_exit():
    seen["modules"] = sorted(sys.modules)
    seen["gc_enabled_at_exit"] = gc.isenabled()
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(seen, f)

atexit.register(at_exit)
import fastflow.runs.runner as runner
start = runner._start

def probed_start(*args, **kwargs):
    seen["gc_enabled_in_run"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()
    return start(*args, **kwargs)

runner._start = probed_start
sys.argv = ["fastflow", "run", "trivial"]
from fastflow.cli import main
main()
"""


def _probe(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = tmp_path / "probe.json"
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res, json.loads(out.read_text())


def test_run_of_a_trivial_pipeline_imports_no_web_cloud_or_transport(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    make_pipeline("trivial", "print('hello')\n")
    first = run_cli("run", "trivial")  # creates and migrates the database
    assert first.returncode == 0, first.stderr
    res, seen = _probe(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "SUCCESS" in res.stderr
    modules = set(cast(list[str], seen["modules"]))
    assert "sqlalchemy.orm" in modules and "fastflow.notify" in modules  # it did run
    loaded = [m for m in NOT_ON_THE_RUN_PATH if m in modules]
    assert loaded == []


def test_the_collector_runs_during_the_run_with_the_start_up_frozen(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    make_pipeline("trivial", "print('hello')\n")
    res, seen = _probe(tmp_path)
    assert res.returncode == 0, res.stderr
    assert seen["gc_enabled_in_run"] is True and seen["gc_enabled_at_exit"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000


def test_commands_run_in_process_leave_the_collector_alone(make_pipeline: MakePipeline) -> None:
    import gc

    from click.testing import CliRunner

    from fastflow.cli import cli

    make_pipeline("trivial", "print('hello')\n")
    frozen = gc.get_freeze_count()
    result = CliRunner().invoke(cli, ["run", "trivial"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled() and gc.get_freeze_count() == frozen
