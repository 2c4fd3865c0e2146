"""``prepare``: environments built with the real uv from an offline package folder, one
per set of dependency files, reused, rebuilt, never half-built."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastflow.config import Settings
from fastflow.environments import builder, in_use, prepare, registry
from fastflow.errors import ConfigError, EnvBuildError
from tests.environments.conftest import Lines, imported_version
from tests.environments.wheels import write_source_package


def _folder(settings: Settings, name: str, requirements: str | None = None) -> Path:
    folder = settings.pipelines_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("print('ok')\n")
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def _env_dirs(settings: Settings) -> list[str]:
    envs = registry.root(settings)
    return sorted(p.name for p in envs.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_conflicting_pins_get_their_own_environments(settings: Settings, lines: Lines) -> None:
    a = prepare(settings, "a", _folder(settings, "a", "ffdemo==1.0\n"), None, lines)
    b = prepare(settings, "b", _folder(settings, "b", "ffdemo==2.0\n"), None, lines)
    assert a.key != b.key and not a.reused and not b.reused
    assert a.path == registry.root(settings) / a.key and a.python == a.path / "bin" / "python"
    assert imported_version(a.python) == "1.0"
    assert imported_version(b.python) == "2.0"
    assert lines.count_of("building environment") == 2
    assert lines.count_of("+ ffdemo==1.0") == 1 and lines.count_of("+ ffdemo==2.0") == 1
    assert lines.count_of("environment ready in") == 2


def test_second_prepare_reuses_and_is_fast(settings: Settings, lines: Lines) -> None:
    folder = _folder(settings, "p", "ffdemo==1.0\n")
    t0 = time.perf_counter()
    first = prepare(settings, "p", folder, None, lines)
    build_s = time.perf_counter() - t0
    reuse = Lines()
    t0 = time.perf_counter()
    second = prepare(settings, "p", folder, None, reuse)
    reuse_s = time.perf_counter() - t0
    assert second == type(second)(first.key, first.path, first.python, reused=True)
    assert len(reuse) == 1 and reuse[0].startswith(f"reusing environment {first.key} (python ")
    assert reuse[0].endswith(", requirements.txt)")
    assert reuse_s <= 0.1 * build_s, (reuse_s, build_s)
    # another pipeline with the same files shares it; the record says who used it
    other = prepare(settings, "q", _folder(settings, "q", "ffdemo==1.0\n"), None, reuse)
    assert other.key == first.key and other.reused
    record = registry.read(first.path)
    assert record is not None and record.pipelines == ["p", "q"]
    assert record.kind == "requirements" and record.files == ["requirements.txt"]
    assert record.last_used_at >= record.created_at
    assert _env_dirs(settings) == [first.key]


def test_changed_requirements_rebuild(settings: Settings, lines: Lines) -> None:
    folder = _folder(settings, "p", "ffdemo==1.0\n")
    old = prepare(settings, "p", folder, None, lines)
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    new = prepare(settings, "p", folder, None, lines)
    assert new.key != old.key and not new.reused
    assert imported_version(new.python) == "2.0"
    assert lines.count_of("building environment") == 2


def test_failed_build_raises_and_the_next_prepare_builds_again(
    settings: Settings, lines: Lines
) -> None:
    folder = _folder(settings, "p", "ffdemo==9.9\n")
    with pytest.raises(EnvBuildError) as err:
        prepare(settings, "p", folder, None, lines)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot build the environment of pipeline")
    assert "there is no version of ffdemo==9.9" in message
    assert any(line.startswith("error:") for line in lines)  # the full output went to log
    assert _env_dirs(settings) == []  # nothing half-built is left to be reused
    again = Lines()
    with pytest.raises(EnvBuildError):
        prepare(settings, "p", folder, None, again)
    assert again.count_of("building environment") == 1  # retried, not reused
    (folder / "requirements.txt").write_text("ffdemo==1.0\n")
    assert imported_version(prepare(settings, "p", folder, None, again).python) == "1.0"


def test_half_built_leftover_is_wiped_and_rebuilt(settings: Settings, lines: Lines) -> None:
    folder = _folder(settings, "p", "ffdemo==1.0\n")
    env = prepare(settings, "p", folder, None, lines)
    (env.path / registry.METADATA).unlink()  # as if killed before the record was written
    (env.path / "junk").write_text("left by a crash")
    again = Lines()
    rebuilt = prepare(settings, "p", folder, None, again)
    assert rebuilt.key == env.key and not rebuilt.reused
    assert (
        again[0] == f"environment {env.key} is half-built (no completion record): building it again"
    )
    assert not (env.path / "junk").exists() and imported_version(rebuilt.python) == "1.0"


def test_missing_interpreter_is_a_clear_error(settings: Settings, lines: Lines) -> None:
    with pytest.raises(ConfigError, match=r"^python 3\.99 is not installed on this machine; "):
        prepare(settings, "p", _folder(settings, "p", "ffdemo==1.0\n"), "3.99", lines)
    assert lines == []


def test_plain_environment_does_not_see_fastflows_packages(
    settings: Settings, lines: Lines
) -> None:
    env = prepare(settings, "plain", _folder(settings, "plain"), None, lines)
    assert lines[0] == f"building environment {env.key} (python " + (
        ".".join(str(n) for n in sys.version_info[:3]) + ", no dependency files)"
    )
    probe = subprocess.run(
        [str(env.python), "-c", "import sys; print(sys.prefix); import fastapi"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert probe.stdout.strip() == str(env.path)
    assert probe.returncode != 0 and "No module named 'fastapi'" in probe.stderr
    assert prepare(settings, "plain", _folder(settings, "plain"), None, lines).reused


def test_requirements_lock_is_honoured(settings: Settings, lines: Lines) -> None:
    folder = _folder(settings, "p", "ffdemo\n")  # unpinned: 2.0 without the lock
    (folder / "requirements.txt.lock").write_text("ffdemo==1.0\n")
    env = prepare(settings, "p", folder, None, lines)
    assert imported_version(env.python) == "1.0"
    assert lines[0].endswith(", requirements.txt.lock)")


def test_pyproject_with_and_without_uv_lock(settings: Settings, lines: Lines) -> None:
    folder = _folder(settings, "p")
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "0"\nrequires-python = ">=3.8"\n'
        'dependencies = ["ffdemo"]\n'
    )
    assert imported_version(prepare(settings, "p", folder, None, lines).python) == "2.0"
    # a lock that pins 1.0 wins over the newest version
    (folder / "pyproject.toml").write_text(
        (folder / "pyproject.toml").read_text().replace('"ffdemo"', '"ffdemo==1.0"')
    )
    locked = subprocess.run(
        [str(builder.uv_binary()), "lock", "--no-progress"],
        cwd=folder,
        env={
            **os.environ,
            "UV_CACHE_DIR": str(settings.data_dir / "lock-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert locked.returncode == 0, locked.stderr
    (folder / "pyproject.toml").write_text(
        (folder / "pyproject.toml").read_text().replace('"ffdemo==1.0"', '"ffdemo"')
    )
    env = prepare(settings, "p", folder, None, lines)
    assert imported_version(env.python) == "1.0"  # --frozen: the lock as it is
    assert lines.count_of("pyproject.toml + uv.lock)") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["main.py", "pyproject.toml", "uv.lock"]


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_environment_is_readable_by_other_users(
    settings: Settings, lines: Lines, strict_umask: None
) -> None:
    env = prepare(settings, "p", _folder(settings, "p", "ffdemo==1.0\n"), None, lines)
    # the root lets every user reach an environment, not list the others (outside audit)
    assert stat.S_IMODE(registry.root(settings).stat().st_mode) == 0o711
    assert stat.S_IMODE(env.path.stat().st_mode) == 0o755
    checked = 0
    for dirpath, dirnames, filenames in os.walk(env.path):
        for name in dirnames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        for name in filenames:
            mode = Path(dirpath, name).lstat().st_mode
            if stat.S_ISREG(mode):
                checked += 1
                assert mode & 0o444 == 0o444, (name, oct(mode))
    assert checked > 5


def test_output_is_streamed_before_the_build_completes(settings: Settings) -> None:
    folder = _folder(settings, "p", "ffdemo==2.0\n")
    seen: list[tuple[str, bool]] = []
    envs = registry.root(settings)

    def log(line: str) -> None:
        complete = any((d / registry.METADATA).exists() for d in envs.iterdir() if d.is_dir())
        seen.append((line, complete))

    env = prepare(settings, "p", folder, None, log)
    uv_lines = [(line, done) for line, done in seen if "ffdemo" in line or "Creating" in line]
    assert uv_lines and not any(done for _, done in uv_lines)
    assert seen[-1][0].startswith("environment ready in ") and seen[-1][1]
    assert not env.reused


def test_uv_variables_reach_the_build_and_fastflow_secrets_do_not(
    settings: Settings, lines: Lines, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = "ffdemo-2.0-py3-none-any.whl"
    # uv expands ${VAR} in requirements files from the environment it was given
    monkeypatch.setenv("UV_FF_WHEELS", str(wheels))
    ok = _folder(settings, "ok", f"ffdemo @ file://${{UV_FF_WHEELS}}/{wheel}\n")
    assert imported_version(prepare(settings, "ok", ok, None, lines).python) == "2.0"
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", str(wheels))  # a secret fastflow has
    leak = _folder(settings, "leak", f"ffdemo @ file://${{S3_SECRET_ACCESS_KEY}}/{wheel}\n")
    leak_lines = Lines()
    with pytest.raises(EnvBuildError, match="S3_SECRET_ACCESS_KEY"):
        prepare(settings, "leak", leak, None, leak_lines)  # not expanded: not passed
    assert leak_lines and not any(str(wheels) in line for line in leak_lines)


def test_in_use_refuses_an_environment_removed_after_prepare(
    settings: Settings, lines: Lines
) -> None:
    env = prepare(settings, "p", _folder(settings, "p", "ffdemo==1.0\n"), None, lines)
    with in_use(env):
        assert env.python.exists()
    (env.path / registry.METADATA).unlink()
    with pytest.raises(EnvBuildError, match="prepare it again"), in_use(env):
        pass


def _with_local_lib(settings: Settings, name: str, version: str) -> Path:
    """A pipeline whose requirements.txt is ``./lib``: a local package (with a build
    backend of its own, so no index is needed) whose ``VERSION`` is ``version``."""
    folder = _folder(settings, name, "./lib\n")
    prelude = (
        "    here = os.path.dirname(__file__)\n"
        "    INIT = 'VERSION = %r\\n' % open(os.path.join(here, 'VERSION')).read().strip()"
    )
    write_source_package(folder / "lib", "fflocal", prelude)
    (folder / "lib" / "VERSION").write_text(version)
    return folder


def test_pipelines_with_the_same_local_path_line_get_their_own_packages(
    settings: Settings, lines: Lines
) -> None:
    """Found by an outside audit: the key hashed only the bytes of requirements.txt, so
    two pipelines with the line ``./lib`` shared one environment (the second ran the
    first one's package), and a changed local package was never installed again."""
    a_folder = _with_local_lib(settings, "a", "1")
    a = prepare(settings, "a", a_folder, None, lines)
    b = prepare(settings, "b", _with_local_lib(settings, "b", "2"), None, lines)
    assert a.key != b.key and not b.reused
    assert imported_version(a.python, "fflocal") == "1"
    assert imported_version(b.python, "fflocal") == "2"
    again = prepare(settings, "a", a_folder, None, lines)
    assert again.key == a.key and again.reused  # unchanged: reused (the build wrote nothing)
    (a_folder / "lib" / "VERSION").write_text("3")
    os.utime(a_folder / "lib" / "VERSION", ns=(1, 1))  # a time of its own, however fast
    changed = prepare(settings, "a", a_folder, None, lines)
    assert changed.key != a.key and not changed.reused
    assert imported_version(changed.python, "fflocal") == "3"


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_an_include_that_is_not_a_file_fails_at_once(
    settings: Settings, lines: Lines, target: str
) -> None:
    """Found by an outside audit: ``-r /dev/zero`` had fastflow read until the memory
    was gone, and an include naming a FIFO would wait for ever (both before any time
    limit)."""
    folder = _folder(settings, "odd")
    if target == "fifo":
        os.mkfifo(folder / "fifo")
    (folder / "requirements.txt").write_text(f"-r {target}\n")
    with pytest.raises(EnvBuildError, match="not a regular file"):
        prepare(settings, "odd", folder, None, lines)
