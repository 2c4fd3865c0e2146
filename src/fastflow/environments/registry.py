"""Where environments live and what is recorded about each.

Layout: ``DATA_DIR/envs/<key>/`` (the virtualenv), ``<key>.lock`` (held exclusively
while it is built, reused or removed), ``<key>.use`` (held shared while a run uses it),
``.uv-cache/`` (uv's cache, unless ``UV_CACHE_DIR`` says otherwise).

Guarantees: ``<key>/fastflow-env.json`` is written last and atomically (rename), so it
is the completion marker: a directory without a readable one is a half-built leftover
and is never reused. Its updates are atomic too (readers see the old or the new file).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastflow.config import Settings
from fastflow.environments.keys import KEY_RE

METADATA = "fastflow-env.json"


def root(settings: Settings) -> Path:
    """``DATA_DIR/envs`` (absolute)."""
    return settings.data_dir.expanduser().resolve() / "envs"


def ensure_root(settings: Settings) -> Path:
    """``DATA_DIR/envs``, mode 0711: every user can reach an environment it is given
    (runs may use another user), none but fastflow can list the others."""
    path = root(settings)
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o711:
        path.chmod(0o711)
    return path


def build_lock(envs: Path, key: str) -> Path:
    return envs / f"{key}.lock"


def use_lock(envs: Path, key: str) -> Path:
    return envs / f"{key}.use"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class EnvRecord:
    """The metadata of one environment (``fastflow-env.json``)."""

    key: str
    digest: str
    python: str
    interpreter: str
    kind: str
    files: list[str]
    pipelines: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=now_iso)
    last_used_at: str = field(default_factory=now_iso)
    build_seconds: float = 0.0
    uv: str = ""

    @property
    def last_used(self) -> datetime:
        when = datetime.fromisoformat(self.last_used_at)
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read(env_dir: Path) -> EnvRecord | None:
    """The record of a complete environment; ``None`` for a half-built (or foreign or
    damaged) directory."""
    try:
        data = json.loads((env_dir / METADATA).read_text(encoding="utf-8"))
        record = EnvRecord(
            key=str(data["key"]),
            digest=str(data["digest"]),
            python=str(data["python"]),
            interpreter=str(data["interpreter"]),
            kind=str(data["kind"]),
            files=[str(f) for f in data["files"]],
            pipelines=[str(p) for p in data["pipelines"]],
            created_at=str(data["created_at"]),
            last_used_at=str(data["last_used_at"]),
            build_seconds=float(data.get("build_seconds", 0.0)),
            uv=str(data.get("uv", "")),
        )
        record.last_used  # noqa: B018 - a malformed time is a damaged record
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def tmp_name() -> str:
    """The name ``write`` writes a record under before renaming it into place."""
    return f".{METADATA}.tmp"


def write(env_dir: Path, record: EnvRecord) -> None:
    """Replace the record atomically (the caller holds the ``.lock``). The temporary file
    is made anew, exclusively and without following links: whatever had its name (a
    link to another file, a FIFO) is removed, never written through."""
    data = (json.dumps(record.to_dict(), indent=2) + "\n").encode()
    dir_fd = os.open(env_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.unlink(tmp_name(), dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp_name(), flags, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp_name(), METADATA, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def remove_record(env_dir: Path) -> None:
    """Make the environment incomplete (first step of removing it)."""
    try:
        (env_dir / METADATA).unlink()
    except FileNotFoundError:
        pass


def keys(envs: Path) -> list[str]:
    """The keys of every environment directory or lock file under ``envs``, sorted."""
    found: set[str] = set()
    try:
        names = os.listdir(envs)
    except FileNotFoundError:
        return []
    for name in names:
        stem = name.removesuffix(".lock").removesuffix(".use")
        if KEY_RE.match(stem):
            found.add(stem)
    return sorted(found)


def size_of(path: Path) -> int:
    """Bytes of the files under ``path`` (each inode once; links not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def listing(envs: Path) -> tuple[list[EnvRecord], list[str]]:
    """The complete environments under ``envs`` (most recently used first) and the keys
    of incomplete directories (being built, or left by a crash)."""
    complete: list[EnvRecord] = []
    incomplete: list[str] = []
    for key in keys(envs):
        if not (envs / key).is_dir():
            continue
        record = read(envs / key)
        if record is None:
            incomplete.append(key)
        else:
            complete.append(record)
    complete.sort(key=lambda r: r.last_used, reverse=True)
    return complete, incomplete
