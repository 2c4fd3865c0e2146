"""Which dependency files a pipeline folder has, and their bytes.

Kinds, first match wins:

- ``requirements-lock``: ``requirements.txt`` with ``requirements.txt.lock`` (Fast-Flow's
  lock: uv's compiled requirements) — the lock is installed exactly (``uv pip sync``);
- ``requirements``: ``requirements.txt`` (``uv pip install -r``);
- ``pyproject-lock``: ``pyproject.toml`` with ``uv.lock`` (``uv sync --frozen``);
- ``pyproject``: ``pyproject.toml`` with a ``[project]`` table (its dependencies);
- ``none``: no dependency file: a plain virtualenv.

Files a requirements file includes (``-r``/``-c``, recursively) are part of the bytes, so
editing an included file changes the key as editing the file itself does.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastflow.errors import EnvBuildError

Kind = Literal["none", "requirements", "requirements-lock", "pyproject", "pyproject-lock"]

REQUIREMENTS = "requirements.txt"
REQUIREMENTS_LOCK = "requirements.txt.lock"
PYPROJECT = "pyproject.toml"
UV_LOCK = "uv.lock"
_INCLUDE_RE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")
_MAX_INCLUDES = 100


@dataclass(frozen=True)
class Dependencies:
    """The dependency files of one folder: ``files`` are (name relative to the folder or
    absolute, bytes), the installed file first."""

    kind: Kind
    files: tuple[tuple[str, bytes], ...]

    @property
    def label(self) -> str:
        """What log lines and ``env list`` call it: the file that is installed."""
        return {
            "none": "no dependency files",
            "requirements": REQUIREMENTS,
            "requirements-lock": REQUIREMENTS_LOCK,
            "pyproject": PYPROJECT,
            "pyproject-lock": f"{PYPROJECT} + {UV_LOCK}",
        }[self.kind]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.files]


def includes(text: str) -> list[str]:
    """The files a requirements text includes with ``-r`` / ``-c`` (as written)."""
    out = []
    for line in text.splitlines():
        m = _INCLUDE_RE.match(line.split(" #", 1)[0])
        if m:
            out.append(m.group(1))
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise EnvBuildError(f"cannot read {path}: {e.strerror or e}") from None


def _with_includes(folder: Path, first: str) -> list[tuple[str, bytes]]:
    """``first`` and every file it includes, recursively (each once, bounded)."""
    out: list[tuple[str, bytes]] = []
    seen: set[Path] = set()
    todo = [folder / first]
    while todo and len(out) < _MAX_INCLUDES:
        path = todo.pop(0)
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        data = _read(path)
        try:
            shown = str(path.relative_to(folder))
        except ValueError:
            shown = str(path)
        out.append((shown, data))
        for name in includes(data.decode("utf-8", "replace")):
            if "://" not in name:  # a URL is uv's to fetch; only local files are hashed
                todo.append(path.parent / name)
    return out


def _is_project(data: bytes) -> bool:
    try:
        return isinstance(tomllib.loads(data.decode("utf-8")).get("project"), dict)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True  # let uv report what is wrong with it


def read(folder: Path) -> Dependencies:
    """The dependency files of ``folder`` (see the module docstring for the order)."""
    if (folder / REQUIREMENTS).is_file():
        if (folder / REQUIREMENTS_LOCK).is_file():
            files = _with_includes(folder, REQUIREMENTS_LOCK)
            files.append((REQUIREMENTS, _read(folder / REQUIREMENTS)))
            return Dependencies("requirements-lock", tuple(files))
        return Dependencies("requirements", tuple(_with_includes(folder, REQUIREMENTS)))
    if (folder / PYPROJECT).is_file():
        project = _read(folder / PYPROJECT)
        if (folder / UV_LOCK).is_file():
            lock = _read(folder / UV_LOCK)
            return Dependencies("pyproject-lock", ((PYPROJECT, project), (UV_LOCK, lock)))
        if _is_project(project):
            return Dependencies("pyproject", ((PYPROJECT, project),))
    return Dependencies("none", ())
