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

``local_state``: a dependency given as a local path (``./lib``, ``-e .``,
``file:///…``, ``path = "…"`` in ``pyproject.toml``/``uv.lock``) is not in those bytes;
its state (the pipeline folder, and the names, sizes and modification times below the
path) goes into the key instead, so that two pipelines with the same ``./lib`` line never
share an environment and a changed local package is installed again.

``Reader``: with ``RUN_AS_USER``, fastflow reads these files with that user's access
(its uid and primary group, as the build runs): a file it may not read — an include of a
root-only file, a link to one — is refused before its bytes reach the key that the log
shows, instead of being read by fastflow's own user.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

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


@dataclass(frozen=True)
class Reader:
    """The user whose access dependency files are read with (uid, primary group)."""

    uid: int
    gid: int

    def may(self, st: os.stat_result, bit: int) -> bool:
        """Whether the mode bits of ``st`` grant this user ``bit`` (4 read, 1 search)."""
        if st.st_uid == self.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == self.gid:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)


def _check_access(fd: int, path: Path, st: os.stat_result, reader: Reader) -> None:
    """Refuse the open file ``fd`` unless ``reader`` could read it: its mode, and the
    search bit of every folder above where it really is (the kernel's name of the open
    file, so a link swapped meanwhile changes nothing)."""
    denied = (
        f"cannot read {path}: Permission denied; the build runs as RUN_AS_USER (uid "
        f"{reader.uid}), and fastflow reads the dependency files and their includes with "
        "that user's access: they must be readable by it"
    )
    if not reader.may(st, 4):
        raise EnvBuildError(denied)
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        real = Path(os.path.realpath(path))
    for folder in real.parents:
        try:
            if not reader.may(os.stat(folder), 1):
                raise EnvBuildError(denied)
        except OSError as e:
            raise EnvBuildError(f"cannot read {path}: {e.strerror or e}") from None


def includes(text: str) -> list[str]:
    """The files a requirements text includes with ``-r`` / ``-c`` (as written)."""
    out = []
    for line in text.splitlines():
        m = _INCLUDE_RE.match(line.split(" #", 1)[0])
        if m:
            out.append(m.group(1))
    return out


MAX_FILE_BYTES = 16 * 1024 * 1024  # a dependency file (or an included one) at most


def _read(path: Path, reader: Reader | None = None) -> bytes:
    """A dependency file's bytes: a regular file of at most ``MAX_FILE_BYTES`` (an
    include naming ``/dev/zero`` or a FIFO would otherwise fill the memory or wait for
    ever, before any time limit applies), that ``reader`` (when given) may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise EnvBuildError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EnvBuildError(f"cannot read {path}: not a regular file")
        if reader is not None:
            _check_access(fd, path, st, reader)
        if st.st_size > MAX_FILE_BYTES:
            raise EnvBuildError(
                f"cannot read {path}: {st.st_size} bytes, more than a dependency file may "
                f"hold ({MAX_FILE_BYTES} bytes)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise EnvBuildError(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise EnvBuildError(f"cannot read {path}: it grew past {MAX_FILE_BYTES} bytes")
    return data


def _with_includes(
    folder: Path, first: str, reader: Reader | None = None
) -> list[tuple[str, bytes]]:
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
        data = _read(path, reader)
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


def read(folder: Path, reader: Reader | None = None) -> Dependencies:
    """The dependency files of ``folder`` (see the module docstring for the order), each
    one read only when ``reader`` (when given) may read it."""
    if (folder / REQUIREMENTS).is_file():
        if (folder / REQUIREMENTS_LOCK).is_file():
            files = _with_includes(folder, REQUIREMENTS_LOCK, reader)
            files.append((REQUIREMENTS, _read(folder / REQUIREMENTS, reader)))
            return Dependencies("requirements-lock", tuple(files))
        return Dependencies("requirements", tuple(_with_includes(folder, REQUIREMENTS, reader)))
    if (folder / PYPROJECT).is_file():
        project = _read(folder / PYPROJECT, reader)
        if (folder / UV_LOCK).is_file():
            lock = _read(folder / UV_LOCK, reader)
            return Dependencies("pyproject-lock", ((PYPROJECT, project), (UV_LOCK, lock)))
        if _is_project(project):
            return Dependencies("pyproject", ((PYPROJECT, project),))
    return Dependencies("none", ())


_LOCAL_TOML_RE = re.compile(r"""\b(?:path|directory|editable)\s*=\s*["']([^"']+)["']""")
_FILE_URL_RE = re.compile(r"""file:[^\s"'#;]+""")
_SKIPPED_DIRS = frozenset(
    {".git", ".hg", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".tox"}
    | {"build", "dist"}
)
MAX_LOCAL_ENTRIES = 20_000  # files looked at below the local paths of one environment


def _local_paths(name: str, data: bytes) -> list[str]:
    """The local paths a dependency file names (as written, or a ``file:`` URL)."""
    text = data.decode("utf-8", "replace")
    found = _FILE_URL_RE.findall(text)
    if name.endswith(".toml") or (name.endswith(".lock") and not name.endswith(".txt.lock")):
        return found + _LOCAL_TOML_RE.findall(text)
    for line in text.splitlines():
        words = line.split(" #", 1)[0].split()
        if words and words[0] in ("-e", "--editable") and len(words) > 1:
            words = words[1:]
        if (words and words[0].startswith(("./", "../", "/", "~"))) or words[:1] == ["."]:
            found.append(words[0])
    return found


def _resolve(base: Path, written: str) -> Path:
    if written.startswith("file:"):
        return Path(unquote(urlsplit(written).path) or "/")
    return (base / Path(written).expanduser()).resolve()


def _state(path: Path, budget: list[int]) -> str:
    """Names, sizes and modification times below ``path``, hashed (bounded)."""
    h = hashlib.sha256()
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if not path.is_dir():
        return f"{st.st_size}:{st.st_mtime_ns}"
    for dirpath, dirnames, filenames in os.walk(path):
        # (what a build writes into a source tree is skipped: it must not change the key)
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for fname in sorted(filenames):
            if budget[0] <= 0:
                return h.hexdigest() + ":truncated"
            budget[0] -= 1
            full = os.path.join(dirpath, fname)
            try:
                f = os.lstat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, path)
            h.update(f"{rel}\0{f.st_size}\0{f.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def local_state(folder: Path, deps: Dependencies) -> tuple[tuple[str, str], ...]:
    """The state of the local-path dependencies ``deps`` names (empty when none): the
    pipeline folder first, then each path with the digest of what is below it."""
    paths: dict[str, Path] = {}
    for name, data in deps.files:
        base = (folder / name).parent
        for written in _local_paths(name, data):
            resolved = _resolve(base, written)
            paths.setdefault(str(resolved), resolved)
    if not paths:
        return ()
    budget = [MAX_LOCAL_ENTRIES]
    states = [(shown, _state(path, budget)) for shown, path in sorted(paths.items())]
    return (("folder", str(folder.resolve())), *states)
