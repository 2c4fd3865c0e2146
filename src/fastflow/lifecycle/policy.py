"""PURE retention decisions: (policy, now, run) -> action. No I/O, no clock.

Invariants kept here and relied on by the executor:
- a run in PENDING or RUNNING never yields an action;
- a run is deleted only when it is older than the count boundary (the newest
  ``keep_runs`` finished runs of its pipeline are kept) or started before ``now - days``;
- a run that is deleted is never also truncated.
"""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastflow.config import Settings
from fastflow.db.models import ACTIVE_STATUSES
from fastflow.runs.pipelines import Retention
from fastflow.runs.refs import RunRef as RunRef

MB = 1024 * 1024


@dataclass(frozen=True)
class Policy:
    """Effective retention of one pipeline; None means unlimited."""

    keep_runs: int | None = None
    max_age_days: int | None = None
    max_log_bytes: int | None = None

    @property
    def limits_deletion(self) -> bool:
        return self.keep_runs is not None or self.max_age_days is not None

    @property
    def is_unlimited(self) -> bool:
        return not self.limits_deletion and self.max_log_bytes is None


def _limit(override: int | None, default: int | None) -> int | None:
    value = default if override is None else override
    return value or None  # 0 means unlimited


def policy_for(settings: Settings, overrides: Retention | None = None) -> Policy:
    """Global settings, overridden per pipeline by ``pipeline.json`` retention values."""
    o = overrides or Retention()
    size_mb = _limit(o.max_size_mb, settings.log_max_size_mb)
    return Policy(
        keep_runs=_limit(o.runs, settings.log_retention_runs),
        max_age_days=_limit(o.days, settings.log_retention_days),
        max_log_bytes=size_mb * MB if size_mb else None,
    )


def age_cutoff(policy: Policy, now: datetime) -> datetime | None:
    """Runs that started before this instant are too old (None: no age limit)."""
    if policy.max_age_days is None:
        return None
    return now - timedelta(days=policy.max_age_days)


class ActionKind(enum.StrEnum):
    ARCHIVE_AND_DELETE_RUN = "archive_and_delete_run"
    TRUNCATE_LOG = "truncate_log"
    ARCHIVE_AND_DROP_FILES = "archive_and_drop_files"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    run: RunRef
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"{self.kind.value:24} {self.run.pipeline_name} {self.run.id} "
            f"(started {self.run.started_at.isoformat(timespec='seconds')}): "
            + "; ".join(self.reasons)
        )


Boundary = tuple[datetime, uuid.UUID]


def decide(
    policy: Policy, now: datetime, run: RunRef, count_boundary: Boundary | None
) -> Action | None:
    """The action for one run, or None to keep it as it is.

    ``count_boundary`` is the (started_at, id) of the oldest run kept by the count rule;
    runs strictly older than it exceed ``keep_runs``.
    """
    if run.status in ACTIVE_STATUSES:
        return None
    by_count = (
        policy.keep_runs is not None and count_boundary is not None and run.key < count_boundary
    )
    cutoff = age_cutoff(policy, now)
    by_age = cutoff is not None and run.started_at < cutoff
    if by_count or by_age:
        return Action(ActionKind.ARCHIVE_AND_DELETE_RUN, run, _reasons(policy, by_count, by_age))
    if (
        policy.max_log_bytes is not None
        and run.log_file is not None
        and run.log_size is not None
        and run.log_size > policy.max_log_bytes
    ):
        return Action(
            ActionKind.TRUNCATE_LOG,
            run,
            (f"log is {run.log_size} bytes, limit {policy.max_log_bytes} bytes",),
        )
    return None


@functools.lru_cache(maxsize=256)
def _reasons(policy: Policy, by_count: bool, by_age: bool) -> tuple[str, ...]:
    out = []
    if by_count:
        out.append(f"more than {policy.keep_runs} finished runs of this pipeline")
    if by_age:
        out.append(f"older than {policy.max_age_days} days")
    return tuple(out)


def fallback(action: Action, error: str) -> Action:
    """The action that replaces a failed truncation: archive, then drop the files."""
    return Action(
        ActionKind.ARCHIVE_AND_DROP_FILES,
        action.run,
        (*action.reasons, f"truncation failed: {error}"),
    )
