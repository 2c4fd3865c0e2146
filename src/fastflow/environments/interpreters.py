"""Find an installed Python interpreter for a pipeline's ``python`` (never download one).

Guarantees: the version is the one the interpreter reports when asked (not the one its
file name suggests); an interpreter inside a virtualenv stands for its base interpreter;
without a requested version the answer is the base interpreter fastflow runs on, never
fastflow's own virtualenv. A version that is not installed is a ``ConfigError`` that
lists what is. Answers are cached per process while the file is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fastflow.errors import ConfigError

_QUERY = (
    "import json, sys; print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3], "
    "'executable': getattr(sys, '_base_executable', None) or sys.executable}))"
)
_NAME_RE = re.compile(r"^python3\.\d{1,2}$")
_QUERY_TIMEOUT_S = 15.0
_QUERY_ENV = ("PATH", "HOME", "PYENV_ROOT", "PYENV_VERSION")  # what a pyenv shim consults


@dataclass(frozen=True)
class Interpreter:
    """An installed interpreter: its full version (``3.11.2``) and its executable."""

    version: str
    path: Path


_cache: dict[tuple[str, int, int, int], Interpreter | None] = {}


def current() -> Interpreter:
    """The base interpreter of the running process (outside any virtualenv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    version = ".".join(str(n) for n in sys.version_info[:3])
    return Interpreter(version, Path(base))


def matches(requested: str, version: str) -> bool:
    """``3.11`` matches every ``3.11.x``; ``3.11.2`` only itself."""
    want = requested.strip().split(".")
    return version.split(".")[: len(want)] == want


def ask(candidate: Path) -> Interpreter | None:
    """What ``candidate`` says it is, or ``None`` when it does not run (a broken link, a
    pyenv shim without that version, not a Python)."""
    try:
        real = candidate.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError):
        return None
    cache_key = (str(real), st.st_ino, st.st_mtime_ns, st.st_size)
    if cache_key in _cache:
        return _cache[cache_key]
    found: Interpreter | None = None
    try:
        out = subprocess.run(
            [str(candidate), "-I", "-c", _QUERY],
            capture_output=True,
            text=True,
            timeout=_QUERY_TIMEOUT_S,
            env={k: v for k, v in os.environ.items() if k in _QUERY_ENV},
            stdin=subprocess.DEVNULL,
        )
        if out.returncode == 0:
            data = json.loads(out.stdout.strip().splitlines()[-1])
            found = Interpreter(str(data["version"]), Path(str(data["executable"])))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        found = None
    _cache[cache_key] = found
    return found


def _search_dirs() -> list[Path]:
    """PATH, then the usual places: /usr/local/bin, /usr/bin, /opt, pyenv and uv's own
    installations."""
    dirs = [Path(p) for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    dirs += [Path("/usr/local/bin"), Path("/usr/bin")]
    home = Path(os.environ.get("HOME") or "~").expanduser()
    pyenv = Path(os.environ.get("PYENV_ROOT") or home / ".pyenv")
    uv_pythons = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or home / ".local/share/uv/python")
    for pattern_root, pattern in (
        (Path("/opt"), "python*/bin"),
        (Path("/opt/python"), "*/bin"),
        (pyenv / "versions", "*/bin"),
        (uv_pythons, "*/bin"),
    ):
        try:
            dirs += sorted(pattern_root.glob(pattern))
        except OSError:
            continue
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def _named(dirs: list[Path], names: set[str] | None) -> list[Path]:
    """Executables ``python3.N`` in ``dirs`` (only ``names`` when given), in order."""
    found = []
    for d in dirs:
        try:
            entries = sorted(os.listdir(d)) if names is None else sorted(names)
        except OSError:
            continue
        for name in entries:
            path = d / name
            if _NAME_RE.match(name) and os.access(path, os.X_OK) and path.is_file():
                found.append(path)
    return found


def installed() -> list[Interpreter]:
    """Every interpreter found, one per executable, in search order."""
    out: dict[Path, Interpreter] = {}
    for interp in [current(), *filter(None, map(ask, _named(_search_dirs(), None)))]:
        out.setdefault(interp.path, interp)
    return list(out.values())


def runnable_by(path: Path, user: tuple[int, int] | None) -> bool:
    """Whether the OS user ``(uid, gid)`` (no supplementary groups) may execute ``path``:
    every folder on the way is searchable and the file executable for it."""
    if user is None or user[0] == 0:
        return True
    try:
        real = path.resolve(strict=True)
        checks = [(d, 0o1) for d in reversed(real.parents)] + [(real, 0o1)]
        for item, bit in checks:
            st = item.stat()
            if st.st_uid == user[0]:
                shift = 6
            elif st.st_gid == user[1]:
                shift = 3
            else:
                shift = 0
            if not (st.st_mode >> shift) & bit:
                return False
    except (OSError, RuntimeError):
        return False
    return True


def find(requested: str | None, user: tuple[int, int] | None = None) -> Interpreter:
    """The interpreter for a pipeline's ``python`` (``None``: the one fastflow runs on, or
    with ``user`` another of its minor version that this user can run);
    ``ConfigError`` when that version is not installed (where ``user`` can run it)."""
    mine = current()
    if (requested is None or matches(requested, mine.version)) and runnable_by(mine.path, user):
        return mine
    wanted = requested or ".".join(mine.version.split(".")[:2])
    minor = ".".join(wanted.strip().split(".")[:2])
    hidden = []
    for candidate in _named(_search_dirs(), {f"python{minor}"}):
        found = ask(candidate)
        if found is not None and matches(wanted, found.version):
            if runnable_by(found.path, user):
                return found
            hidden.append(found)
    if (requested is None or matches(wanted, mine.version)) and mine not in hidden:
        hidden.insert(0, mine)
    if hidden and user is not None:
        where = ", ".join(f"{i.version} ({i.path})" for i in hidden)
        raise ConfigError(
            f"python {wanted} is installed only where the run's user (uid {user[0]}) cannot "
            f"execute it: {where}; install it in a shared location such as /usr/bin"
        )
    listed = ", ".join(f"{i.version} ({i.path})" for i in installed()) or "none found"
    raise ConfigError(f"python {wanted} is not installed on this machine; installed: {listed}")
