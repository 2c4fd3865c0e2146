"""``collect``: remove environments unused for a while, and half-built leftovers.

Guarantees: an environment is removed only while this process holds both its locks —
``<key>.lock`` (nobody builds or prepares it) and ``<key>.use`` exclusively (no run uses
it); one that is locked is skipped and reported, never waited for. Its age is checked
again under the lock (a ``prepare`` may just have used it). The record goes first, so a
removal interrupted halfway leaves a half-built leftover, never a reusable environment.
Lock files of keys without an environment are removed too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastflow.config import Settings
from fastflow.environments import locks, registry


@dataclass(frozen=True)
class Removed:
    key: str
    pipelines: list[str]
    size_bytes: int
    reason: str  # "unused since <time>" or "half-built leftover"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "pipelines": self.pipelines,
            "size_bytes": self.size_bytes,
            "reason": self.reason,
        }


@dataclass
class Collected:
    """What one ``collect`` did."""

    removed: list[Removed] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    kept: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(r.size_bytes for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": [r.to_dict() for r in self.removed],
            "skipped": [{"key": k, "reason": why} for k, why in self.skipped],
            "kept": self.kept,
            "freed_bytes": self.freed_bytes,
        }


def _remove(env_dir: Path) -> None:
    registry.remove_record(env_dir)
    shutil.rmtree(env_dir, ignore_errors=True)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _collect_one(envs: Path, key: str, cutoff: datetime, out: Collected) -> None:
    env_dir = envs / key
    build_lock, use_lock = registry.build_lock(envs, key), registry.use_lock(envs, key)
    if not env_dir.exists() and not build_lock.exists() and not use_lock.exists():
        return
    with locks.try_exclusive(build_lock) as held:
        if not held:
            out.skipped.append((key, "being built or prepared"))
            return
        with locks.try_exclusive(use_lock) as unused:
            if not unused:
                out.skipped.append((key, "in use"))
                return
            record = registry.read(env_dir)
            if record is not None and record.last_used > cutoff:
                out.kept += 1
                return
            if env_dir.exists():
                size = registry.size_of(env_dir)
                if record is None:
                    out.removed.append(Removed(key, [], size, "half-built leftover"))
                else:
                    since = f"unused since {record.last_used_at}"
                    out.removed.append(Removed(key, record.pipelines, size, since))
                _remove(env_dir)
            if not env_dir.exists():  # locks of a key without environment go as well
                _unlink(use_lock)
                _unlink(build_lock)


def collect(
    settings: Settings, older_than: timedelta | None = None, now: datetime | None = None
) -> Collected:
    """Remove every environment last used before ``now - older_than`` (default:
    ``ENV_RETENTION_DAYS``) and every half-built leftover, skipping locked ones."""
    if older_than is None:
        older_than = timedelta(days=settings.env_retention_days)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    cutoff = now - older_than
    envs = registry.root(settings)
    out = Collected()
    for key in registry.keys(envs):
        _collect_one(envs, key, cutoff, out)
    return out
