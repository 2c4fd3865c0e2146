"""A run cancelled while its environment is built never starts ``main.py``, and nothing
of the build outlives it: found by an outside audit, the build ran on, ``main.py`` ran
after it, and the run only then ended CANCELLED; a ``fastflow`` killed with SIGKILL
left uv building."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastflow.config import Settings
from fastflow.context import Context
from fastflow.db.models import PipelineRun
from fastflow.environments import registry
from tests.conftest import MakePipeline, cli_process, wait_until

MAIN = "open({marker!r}, 'w').write('ran')\nprint('main ran')\n"


@contextmanager
def uv_cache_held(settings: Settings) -> Iterator[None]:
    """uv waits for its cache lock while this holds it: a build that does not end."""
    cache = registry.root(settings) / ".uv-cache"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def builders(envs: Path) -> list[int]:
    """The processes building into ``envs`` (the reaper and uv name it on their command
    line)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if str(envs).encode() in cmdline and b"fastflow" not in cmdline.split(b"\0")[0]:
            found.append(int(name))
    return found


def _log_says(ff_env: dict[str, str], name: str, text: bytes) -> bool:
    """Some run log of pipeline ``name`` holds ``text`` (build lines are written live)."""
    return any(text in f.read_bytes() for f in (Path(ff_env["LOGS_DIR"]) / name).glob("*/run.log"))


def _building(ff_env: dict[str, str], name: str) -> bool:
    return _log_says(ff_env, name, b"building environment")


def test_sigterm_during_the_build_ends_the_run_cancelled_without_starting_main(
    app: Context,
    ff_env: dict[str, str],
    settings: Settings,
    make_pipeline: MakePipeline,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "main-ran"
    folder = make_pipeline("p", MAIN.format(marker=str(marker)))
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    envs = registry.root(settings)
    with uv_cache_held(settings), cli_process("run", "p", env=ff_env) as proc:
        wait_until(lambda: _building(ff_env, "p"), 60, "the environment build to start")
        wait_until(lambda: builders(envs), 30, "uv to run")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        wait_until(lambda: not builders(envs), 30, "the build's processes to end")
    assert proc.returncode == 1, err
    assert not marker.exists(), "main.py ran after the run was cancelled"
    with app.db.session() as s:
        rows = list(s.query(PipelineRun).all())
    assert [(r.status, r.attempt) for r in rows] == [("CANCELLED", 1)]
    log = next((Path(ff_env["LOGS_DIR"]) / "p").glob("*/run.log")).read_text()
    assert "not started: the environment build was stopped: the run was cancelled" in log
    assert "main ran" not in log
    assert [p.name for p in envs.iterdir() if not p.name.startswith(".")] == [
        p.name for p in envs.iterdir() if p.suffix == ".lock"
    ], "a half-built environment was left"
    # the build lock was released: the next run builds and runs
    with cli_process("run", "p", env=ff_env) as proc2:
        proc2.communicate(timeout=300)
    assert proc2.returncode == 0 and marker.read_text() == "ran"


def test_a_fastflow_killed_during_the_build_leaves_no_uv_running(
    ff_env: dict[str, str], settings: Settings, make_pipeline: MakePipeline
) -> None:
    folder = make_pipeline("p", "print('hi')\n")
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    envs = registry.root(settings)
    with uv_cache_held(settings), cli_process("run", "p", env=ff_env) as proc:
        wait_until(lambda: _building(ff_env, "p"), 60, "the environment build to start")
        wait_until(lambda: builders(envs), 30, "uv to run")
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(lambda: not builders(envs), 30, "the orphaned build's processes to end")


def test_a_cancel_through_the_api_during_the_build_never_starts_main(
    ff_env: dict[str, str], settings: Settings, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """The same through a server: ``POST /api/runs/{id}/cancel`` while the run's
    environment is built (the audit's first way in)."""
    import httpx

    from tests.conftest import run_cli
    from tests.harness.serve import fastflow_serve

    marker = tmp_path / "main-ran"
    folder = make_pipeline("p", MAIN.format(marker=str(marker)))
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    envs = registry.root(settings)
    env = {**os.environ, **ff_env}
    made = run_cli("token", "create", "--name", "t", "--role", "admin", env=env)
    assert made.returncode == 0, made.stderr
    admin = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with uv_cache_held(settings), fastflow_serve(env) as url:
        started = httpx.post(f"{url}/api/pipelines/p/run", headers=admin)
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        wait_until(lambda: _building(ff_env, "p"), 60, "the environment build to start")
        wait_until(lambda: builders(envs), 30, "uv to run")
        res = httpx.post(f"{url}/api/runs/{run_id}/cancel", headers=admin)
        assert res.status_code == 200, res.text

        def status() -> str:
            return str(httpx.get(f"{url}/api/runs/{run_id}", headers=admin).json()["status"])

        wait_until(lambda: status() == "CANCELLED", 30, "the run to end CANCELLED")
        wait_until(lambda: not builders(envs), 30, "the build's processes to end")
    assert not marker.exists(), "main.py ran after the run was cancelled"


def test_a_run_waiting_for_another_build_of_its_environment_is_cancelled_at_once(
    app: Context,
    ff_env: dict[str, str],
    settings: Settings,
    make_pipeline: MakePipeline,
    tmp_path: Path,
) -> None:
    """Cancelled while it waits for the build lock another process holds (the same new
    environment built elsewhere), the run ends at once: it does not wait for that build."""
    from fastflow.environments import interpreters, keys, locks, sources

    marker = tmp_path / "main-ran"
    folder = make_pipeline("p", MAIN.format(marker=str(marker)))
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    deps = sources.read(folder)
    key = keys.key_of(keys.digest(interpreters.find(None).version, deps.kind, deps.files))
    envs = registry.ensure_root(settings)

    with (
        locks.exclusive(registry.build_lock(envs, key)),
        cli_process("run", "p", env=ff_env) as proc,
    ):
        wait_until(
            lambda: _log_says(ff_env, "p", b"waiting for environment"),
            60,
            "the run to wait for the build lock",
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert not marker.exists()
    with app.db.session() as s:
        assert [r.status for r in s.query(PipelineRun).all()] == ["CANCELLED"]


def test_a_cancel_after_the_build_just_before_the_start_never_starts_main(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path, monkeypatch: object
) -> None:
    """A review: a cancel landing after the check that follows the build, while the run's
    working directory and environment were made, still started ``main.py`` (and stopped
    it at once). The cancel is set exactly there: when the working directory is made."""
    import threading

    import pytest

    from fastflow.runs import isolation, runner

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    marker = tmp_path / "ran"
    make_pipeline("late", MAIN.format(marker=str(marker)))
    cancel = threading.Event()
    made = isolation.make_workdir

    def make_then_cancel(*args: object, **kwargs: object) -> Path:
        cancel.set()
        return made(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(isolation, "make_workdir", make_then_cancel)
    result = runner.run_pipeline(app.db, app.settings, "late", "cli", cancel=cancel)
    assert result.status.value == "CANCELLED"
    assert not marker.exists(), "main.py started after the run was cancelled"
    assert "not started: the run was cancelled" in result.log_path.read_text()
