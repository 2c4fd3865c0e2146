"""``fastflow env build|list|gc`` through the real command, and two processes building
the same new environment at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from fastflow.config import Settings
from fastflow.environments import interpreters, keys, locks, registry, sources
from tests.conftest import MakePipeline, wait_until
from tests.environments.conftest import imported_version
from tests.environments.wheels import write_source_package

Cli = Callable[..., CompletedProcess[str]]
LIST_KEYS = {"key", "pipelines", "size_bytes", "last_used_at", "python", "created_at"}


def test_build_list_and_gc(
    settings: Settings, make_pipeline: MakePipeline, cli: Cli, wheels: Path
) -> None:
    folder = make_pipeline("p")
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    built = cli("env", "build", "p")
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip())
    assert built.stdout.count("\n") == 1 and path.parent == registry.root(settings)
    assert "[env] building environment " in built.stderr and "+ ffdemo==2.0" in built.stderr
    assert imported_version(path / "bin" / "python") == "2.0"
    # uv's cache is fastflow's alone: a run's user could hold its locks (outside audit)
    assert (registry.root(settings) / ".uv-cache").stat().st_mode & 0o777 == 0o700
    again = cli("env", "build", "p")
    assert again.returncode == 0 and again.stdout == built.stdout
    assert "[env] reusing environment" in again.stderr

    listed = json.loads(cli("env", "list", "--json").stdout)
    assert len(listed) == 1 and set(listed[0]) == LIST_KEYS
    assert listed[0]["key"] == path.name and listed[0]["pipelines"] == ["p"]
    assert listed[0]["size_bytes"] > 0 and listed[0]["python"].count(".") == 2
    text = cli("env", "list")
    assert text.returncode == 0 and path.name in text.stdout and " p" in text.stdout

    kept = cli("env", "gc", "--older-than", "30d")
    assert (
        kept.returncode == 0
        and "removed 0 environment(s), freed 0 B (0 bytes); 1 kept" in kept.stdout
    )
    assert path.is_dir()
    with locks.shared(registry.use_lock(registry.root(settings), path.name)):  # a run uses it
        busy = cli("env", "gc", "--older-than", "0d")
    assert busy.returncode == 0 and f"skipped {path.name}: in use" in busy.stdout
    # (found by an outside audit: the summary said "0 kept" beside the skipped one)
    assert "; 0 kept, 1 skipped (locked)" in busy.stdout and path.is_dir()
    gone = cli("env", "gc", "--older-than", "0d", "--json")
    assert gone.returncode == 0, gone.stderr
    report = json.loads(gone.stdout)
    assert [r["key"] for r in report["removed"]] == [path.name]
    assert report["freed_bytes"] == report["removed"][0]["size_bytes"] > 0
    assert not path.exists() and json.loads(cli("env", "list", "--json").stdout) == []
    assert sorted(os.listdir(registry.root(settings))) == [".uv-cache"]

    bad = cli("env", "gc", "--older-than", "soon")
    assert bad.returncode == 2 and "30d, 12h or 90m" in bad.stderr


def test_failed_build_and_unknown_pipeline(
    settings: Settings, make_pipeline: MakePipeline, cli: Cli
) -> None:
    folder = make_pipeline("p")
    (folder / "requirements.txt").write_text("ffdemo==9.9\n")
    failed = cli("env", "build", "p")
    assert failed.returncode == 1 and failed.stdout == ""
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("fastflow: cannot build the environment of pipeline 'p'")
    assert "there is no version of ffdemo==9.9" in last
    assert "[env] error: No solution found" in failed.stderr  # the full output, streamed
    missing = cli("env", "build", "nope")
    assert missing.returncode == 1 and "pipeline 'nope' not found" in missing.stderr
    (folder / "pipeline.json").write_text('{"python": "3.99"}')
    no_python = cli("env", "build", "p")
    assert no_python.returncode == 2
    assert "fastflow: python 3.99 is not installed on this machine; installed: " in (
        no_python.stderr
    )


def _start_build(out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fastflow", "env", "build", "p"],
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def test_two_processes_build_a_new_environment_once(
    settings: Settings, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    folder = make_pipeline("p")
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    deps = sources.read(folder)
    key = keys.key_of(keys.digest(interpreters.find(None).version, deps.kind, deps.files))
    envs = registry.ensure_root(settings)
    outs = [tmp_path / "one.out", tmp_path / "two.out"]
    # hold the key's lock so that both processes are surely waiting for it at once
    with locks.exclusive(registry.build_lock(envs, key)):
        procs = [_start_build(out) for out in outs]
        wait_until(
            lambda: all("waiting for environment" in out.read_text() for out in outs),
            60,
            "both builds to wait for the lock",
        )
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    text = [out.read_text() for out in outs]
    assert sum(t.count("building environment") for t in text) == 1, text
    assert sum(t.count("reusing environment") for t in text) == 1, text
    assert all(t.strip().splitlines()[-1] == str(envs / key) for t in text)
    assert sorted(p.name for p in envs.iterdir() if p.is_dir()) == [".uv-cache", key]
    assert imported_version(envs / key / "bin" / "python") == "1.0"


def test_a_build_waiting_forever_is_stopped_at_its_time_limit(
    settings: Settings, make_pipeline: MakePipeline, cli: Cli
) -> None:
    """Found by an outside audit: a process holding uv's cache lock (a run's leftover)
    kept every build — and the run waiting for it — waiting forever. A build now has
    ``ENV_BUILD_TIMEOUT_SECONDS`` in all."""
    import fcntl
    import time

    folder = make_pipeline("p")
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    cache = registry.root(settings) / ".uv-cache"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t0 = time.monotonic()
        res = cli("env", "build", "p", env={"ENV_BUILD_TIMEOUT_SECONDS": "2"})
        elapsed = time.monotonic() - t0
    assert res.returncode != 0
    assert "took longer than 2 s (ENV_BUILD_TIMEOUT_SECONDS)" in res.stderr, res.stderr
    assert elapsed < 30
    root = registry.root(settings)
    assert [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] == []
    again = cli("env", "build", "p")  # the lock released: it builds
    assert again.returncode == 0, again.stderr


# a backend that prints uv's settings, then fails (uv shows a failed build's output)
LEAKY_PRELUDE = """
    print("password:", os.environ.get("UV_INDEX_PRIVATE_PASSWORD"))
    raise SystemExit("this backend fails after printing uv's settings")
"""


def test_env_build_masks_uv_credentials_a_backend_prints(
    make_pipeline: MakePipeline, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an outside audit: a run's build lines masked them, ``fastflow env
    build`` printed them as uv showed them."""
    monkeypatch.setenv("UV_INDEX_PRIVATE_PASSWORD", "idx-pass-9876")
    monkeypatch.setenv("UV_OFFLINE", "1")
    folder = make_pipeline("leaky")
    (folder / "requirements.txt").write_text("./pkg\n")
    write_source_package(folder / "pkg", "leaky", LEAKY_PRELUDE)
    built = cli("env", "build", "leaky")
    assert built.returncode == 1
    assert "password: ***" in built.stderr
    assert "idx-pass-9876" not in built.stderr + built.stdout


STORED = "stored-Secret-4412xq"
# a backend that prints a value that is also a stored secret, then fails
STORED_PRELUDE = f"""
    print("token:", {STORED!r})
    raise SystemExit("failing with {STORED}")
"""


def test_env_build_masks_every_stored_secret(
    make_pipeline: MakePipeline, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an outside audit: a run's build lines are masked for every stored secret,
    ``fastflow env build`` printed them in clear (and in its error message)."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    assert cli("secret", "set", "API_TOKEN", input=STORED + "\n").returncode == 0
    folder = make_pipeline("leaky")
    (folder / "requirements.txt").write_text("./pkg\n")
    write_source_package(folder / "pkg", "leaky", STORED_PRELUDE)
    built = cli("env", "build", "leaky")
    assert built.returncode == 1
    assert "token: ***" in built.stderr
    assert STORED not in built.stderr + built.stdout
