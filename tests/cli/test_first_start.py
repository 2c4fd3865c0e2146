"""What a new user meets first: every command says where it creates a new database,
start-up is quiet (no Alembic INFO lines), ``.env`` in the working folder configures
every command, and ``make run`` writes one for the examples and installs the runtime
dependencies only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.harness.serve import fastflow_serve

REPO = Path(__file__).resolve().parents[2]
NOTICE = "fastflow: creating a new database at "


def test_a_new_database_is_announced_once_with_its_path(
    ff_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("DATA_DIR")  # the defaults: ./data/fastflow.db
    first = run_cli("user", "list")
    assert first.returncode == 0, first.stderr
    database = tmp_path / "data" / "fastflow.db"
    assert f"{NOTICE}{database}\n" in first.stderr
    assert database.is_file()
    again = run_cli("runs")
    assert again.returncode == 0, again.stderr
    assert "creating a new database" not in again.stderr
    elsewhere = tmp_path / "other-folder"
    elsewhere.mkdir()
    moved = run_cli("user", "list", env={"DATA_DIR": str(elsewhere / "state")})
    assert f"{NOTICE}{elsewhere / 'state' / 'fastflow.db'}\n" in moved.stderr


@pytest.mark.parametrize(
    ("args", "code", "out"),
    [
        (("runs", "--json"), 0, "[]"),
        (("logs", "abcd1234"), 1, ""),
        (("search", "needle"), 1, ""),
        (("cancel", "abcd1234"), 1, ""),
    ],
)
def test_a_read_only_command_never_creates_a_database(
    ff_env: dict[str, str], tmp_path: Path, args: tuple[str, ...], code: int, out: str
) -> None:
    """An outside audit: a mistyped ``DATABASE_URL`` made ``fastflow runs`` create an
    empty database, its folders included, and print "no runs". Commands that only read
    what was recorded answer as for an empty database, say that there is none, and
    create nothing (not the file, its folders, nor ``DATA_DIR``)."""
    typo = tmp_path / "nowhere" / "deeper" / "fastflow.db"
    data = tmp_path / "fresh-data"
    res = run_cli(*args, env={"DATABASE_URL": f"sqlite:///{typo}", "DATA_DIR": str(data)})
    assert res.returncode == code, res.stderr
    assert res.stdout.strip() == out
    assert f"fastflow: no database at {typo}: nothing has been recorded there" in res.stderr
    assert "creating a new database" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "nowhere").exists() and not data.exists()


def test_serve_logs_the_new_database_and_no_alembic_lines(
    ff_env: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log, fastflow_serve(dict(os.environ), stderr=log) as url:
        assert httpx.get(url + "/api/health").status_code == 200
    text = log_path.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if "creating a new database at" in line)
    assert "INFO fastflow:" in line and line.endswith(str(Path(ff_env["DATA_DIR"]) / "fastflow.db"))
    assert "alembic" not in text.lower() and "Running upgrade" not in text


def test_env_file_in_the_working_folder_configures_every_command(
    ff_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ff_env:
        monkeypatch.delenv(name)
    project = tmp_path / "project"
    (project / "flows" / "hello").mkdir(parents=True)
    (project / "flows" / "hello" / "main.py").write_text("print('hello from .env')\n")
    (project / ".env").write_text(
        "PIPELINES_DIR=flows\nDATA_DIR=./state\nLOGS_DIR=./run-logs\n", encoding="utf-8"
    )
    monkeypatch.chdir(project)
    listed = run_cli("pipelines")
    assert listed.returncode == 0 and listed.stdout.startswith("hello"), listed.stderr
    ran = run_cli("run", "hello")
    assert ran.returncode == 0, ran.stderr
    assert f"{NOTICE}{project / 'state' / 'fastflow.db'}" in ran.stderr
    assert (project / "state" / "fastflow.db").is_file()
    assert any((project / "run-logs" / "hello").iterdir())
    second = run_cli("logs", ran.stdout.strip().splitlines()[-1])  # "a second terminal"
    assert second.returncode == 0 and "hello from .env" in second.stdout, second.stderr
    monkeypatch.chdir(tmp_path)  # elsewhere, without the .env: nothing of it is seen
    lost = run_cli("run", "hello")
    assert lost.returncode == 1 and "not found" in lost.stderr


def _make(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_writes_an_env_file_for_the_examples_once(
    ff_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ff_env:
        monkeypatch.delenv(name)
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "examples", checkout / "examples")
    made = _make(".env", cwd=checkout)
    assert made.returncode == 0, made.stderr
    env_file = (checkout / ".env").read_text(encoding="utf-8")
    for line in ("PIPELINES_DIR=examples/pipelines", "DATA_DIR=./data", "LOGS_DIR=./logs"):
        assert line in env_file.splitlines()
    monkeypatch.chdir(checkout)  # the second terminal: same folder, no variables set
    ran = run_cli("run", "hello")
    assert ran.returncode == 0, ran.stderr
    assert (checkout / "data" / "fastflow.db").is_file()
    (checkout / ".env").write_text("PIPELINES_DIR=mine\n", encoding="utf-8")
    again = _make(".env", cwd=checkout)
    assert again.returncode == 0, again.stderr
    assert (checkout / ".env").read_text(encoding="utf-8") == "PIPELINES_DIR=mine\n"


def test_make_run_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    run = _make("-n", "run", cwd=tmp_path)  # -n: print the commands, run none
    assert run.returncode == 0, run.stderr
    installs = [line for line in run.stdout.splitlines() if "pip install" in line]
    assert any(line.endswith("install -q -e .") for line in installs), run.stdout
    assert not any("[dev]" in line for line in installs), run.stdout
    assert "fastflow serve" in run.stdout
    test = _make("-n", "test", cwd=tmp_path)
    assert test.returncode == 0, test.stderr
    assert any('-e ".[dev]"' in line for line in test.stdout.splitlines()), test.stdout
