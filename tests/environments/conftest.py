"""Fixtures for environment tests: an offline package source (two versions of one tiny
package served with ``UV_FIND_LINKS`` + ``UV_OFFLINE``), settings, a log recorder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fastflow.config import Settings, load_settings
from tests.environments.wheels import write_demo_wheels


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def offline(ff_env: dict[str, str], wheels: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv finds packages only in ``wheels`` (no index); returns that folder."""
    for name in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_OFFLINE", "1")
    return wheels


@pytest.fixture
def settings(offline: Path) -> Settings:
    return load_settings()


class Lines(list[str]):
    """A ``log`` callback that keeps every line."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def count_of(self, text: str) -> int:
        return sum(text in line for line in self)


@pytest.fixture
def lines() -> Lines:
    return Lines()


def imported_version(python: Path, module: str = "ffdemo") -> str:
    """``module.VERSION`` as the interpreter ``python`` sees it (clean environment)."""
    out = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.VERSION)"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
