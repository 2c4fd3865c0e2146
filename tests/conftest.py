"""Shared fixtures: an isolated fastflow environment per test, pipelines, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastflow.config import Settings, load_settings
from fastflow.context import Context, bootstrap

if TYPE_CHECKING:  # imported by pytest as a plugin below (its asserts rewritten)
    from tests.harness.fixtures import S3Env

pytest_plugins = ["tests.harness.fixtures"]

# every variable fastflow reads; cleared so that the developer's shell cannot leak in
FASTFLOW_VARS = [name.upper() for name in Settings.model_fields] + ["FASTFLOW_SECRET_KEY"]


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """``bootstrap`` applies ``FASTFLOW_UMASK`` to the whole process; every test starts
    and ends with the umask pytest had."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def _stop_dispatchers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every dispatcher loop a test started (an app's run route starts one) ends with the
    test: left running, its thread polled a database the test had dropped and logged a
    traceback every few seconds — into later tests' captured logs (a CI run failed on
    it)."""
    from fastflow.orchestration import dispatcher

    started: list[Any] = []
    real = dispatcher.Dispatcher.ensure_running

    def tracked(self: Any) -> None:
        started.append(self)
        real(self)

    monkeypatch.setattr(dispatcher.Dispatcher, "ensure_running", tracked)
    yield
    for d in started:
        d.stop()
    for d in started:
        thread = d._thread
        if thread is not None:
            thread.join(timeout=10)


@pytest.fixture
def ff_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A clean fastflow environment rooted in ``tmp_path`` (also the working directory)."""
    for name in FASTFLOW_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'fastflow.db'}",
        "DATA_DIR": str(tmp_path / "data"),
        "LOGS_DIR": str(tmp_path / "logs"),
        "PIPELINES_DIR": str(tmp_path / "pipelines"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "pipelines").mkdir()
    monkeypatch.chdir(tmp_path)
    return env


# the fields DESIGN.md promises on every run object (CLI --json, API, database columns)
RUN_FIELDS = frozenset(
    {
        "id",
        "pipeline_name",
        "status",
        "triggered_by",
        "started_at",
        "finished_at",
        "exit_code",
        "log_file",
        "metrics_file",
    }
)

MakePipeline = Callable[..., Path]

# what the "forkserver" of the multi-process tests imports once, before it forks children
FORKSERVER_PRELOAD = [
    "fastflow.config",
    "fastflow.db.engine",
    "fastflow.orchestration.followup",
    "fastflow.orchestration.queue",
]


@contextmanager
def cli_process(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``python -m fastflow ARGS`` running with ``env`` over this environment, its
    output piped as text; killed (and reaped) on the way out if it is still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.02)


@pytest.fixture
def make_pipeline(ff_env: dict[str, str]) -> MakePipeline:
    """Write ``PIPELINES_DIR/<name>/main.py`` (dedented) and optional ``pipeline.json``."""

    def make(name: str, code: str = "print('ok')\n", config: str | None = None) -> Path:
        folder = Path(ff_env["PIPELINES_DIR"]) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "main.py").write_text(textwrap.dedent(code), encoding="utf-8")
        if config is not None:
            (folder / "pipeline.json").write_text(config, encoding="utf-8")
        return folder

    return make


@pytest.fixture
def app(ff_env: dict[str, str]) -> Iterator[Context]:
    """A bootstrapped context (settings from the environment, migrated database)."""
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


@pytest.fixture
def s3_app(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    """``app`` with S3 backup on, against the test S3 server (``s3``)."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def tune(ctx: Context, **overrides: Any) -> Context:
    """The same database with other settings."""
    data = ctx.settings.model_dump()
    data.update(overrides)
    return Context(settings=load_settings(**data), db=ctx.db)


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``fastflow`` command in a subprocess with the current environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fastflow", *args],
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
