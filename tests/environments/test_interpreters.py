"""Finding installed interpreters: by asking them, never downloading one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastflow.environments import interpreters
from fastflow.errors import ConfigError


def _reported(path: Path) -> str:
    out = subprocess.run(
        [str(path), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_default_is_the_base_interpreter_not_fastflows_venv() -> None:
    mine = interpreters.find(None)
    assert mine.version == ".".join(str(n) for n in sys.version_info[:3])
    assert _reported(mine.path) == mine.version
    assert not (mine.path.parent.parent / "pyvenv.cfg").exists()  # not inside a venv
    # asking for fastflow's own minor version gives the same interpreter (shared envs)
    assert interpreters.find(f"{sys.version_info[0]}.{sys.version_info[1]}") == mine


def test_every_installed_version_is_found_by_asking_it() -> None:
    found = interpreters.installed()
    assert interpreters.current() in found
    for interp in found:
        assert _reported(interp.path) == interp.version
        picked = interpreters.find(interp.version)
        assert picked.version == interp.version
        minor = ".".join(interp.version.split(".")[:2])
        assert interpreters.matches(minor, interpreters.find(minor).version)


def test_a_missing_version_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        interpreters.find("3.99")
    message = str(err.value)
    assert message.startswith("python 3.99 is not installed on this machine; installed: ")
    mine = interpreters.current()
    assert f"{mine.version} ({mine.path})" in message
    assert "\n" not in message
