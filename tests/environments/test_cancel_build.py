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


def _building(ff_env: dict[str, str], name: str) -> bool:
    return any(
        b"building environment" in f.read_bytes()
        for f in (Path(ff_env["LOGS_DIR"]) / name).glob("*/run.log")
    )


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
