"""PURE retention decisions: (policy, now, run) -> action. No I/O, no clock.

Invariants kept here and relied on by the executor:
- a run in PENDING or RUNNING never yields an action;
- a run is deleted only when it is older than the count boundary (the newest
  ``keep_runs`` finished runs of its pipeline are kept) or started before ``now - days``;
- a run that is deleted is never also truncated;
- keep rules (issue 16): a run that count or age retention would delete is kept
  (``keep``) when it is pinned, the newest SUCCESS run of its pipeline
  (``keep_last_success``) or one of its newest ``keep_failed`` failed runs (FAILED or
  TIMEOUT); a pinned run is never truncated either. A run kept by a rule (not a pin)
  whose log is oversized is still truncated, so that the size limit holds.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from fastflow.config import Settings
from fastflow.db.models import ACTIVE_STATUSES, RunStatus
from fastflow.runs.pipelines import Retention
from fastflow.runs.refs import RunRef as RunRef

MB = 1024 * 1024
# the statuses ``keep_failed`` counts: the run did not do its work by itself (a cancelled
# run was stopped on purpose and is not counted)
FAILED_STATUSES = (RunStatus.FAILED.value, RunStatus.TIMEOUT.value)


class KeepReason(enum.StrEnum):
    """Why a run that retention would remove is kept (plan entries, ``/metrics``)."""

    PINNED = "pinned"
    LAST_SUCCESS = "last_success"
    KEEP_FAILED = "keep_failed"


@dataclass(frozen=True)
class Policy:
    """Effective retention of one pipeline; None means unlimited."""

    keep_runs: int | None = None
    max_age_days: int | None = None
    max_log_bytes: int | None = None
    keep_last_success: bool = True
    keep_failed: int = 0

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
    keep_last = o.keep_last_success
    keep_failed = o.keep_failed
    return Policy(
        keep_runs=_limit(o.runs, settings.log_retention_runs),
        max_age_days=_limit(o.days, settings.log_retention_days),
        max_log_bytes=size_mb * MB if size_mb else None,
        keep_last_success=(
            settings.log_retention_keep_last_success if keep_last is None else keep_last
        ),
        keep_failed=settings.log_retention_keep_failed if keep_failed is None else keep_failed,
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
    # not an action: a run that retention would remove, kept by a rule or a pin (its one
    # reason is a ``KeepReason``); shown by the dry run, never executed
    KEEP = "keep"


class Action(NamedTuple):
    """What a pass does with one run (a named tuple: the planner makes one per candidate)."""

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


@dataclass(frozen=True)
class Keeps:
    """What the keep rules protect in one pipeline, as the planner found it in SQL.

    ``last_success``: (started_at, id) of the newest SUCCESS run; ``failed_from``: that of
    the oldest of the newest ``keep_failed`` failed runs (every failed run at or after it
    is kept). None: no such run (or the rule is off)."""

    last_success: Boundary | None = None
    failed_from: Boundary | None = None


NO_KEEPS = Keeps()
_NOW = object()  # ``decide``'s cutoff default: computed from ``now``
_SUCCESS = RunStatus.SUCCESS.value
_NIL = uuid.UUID(int=0)


def decide(
    policy: Policy,
    now: datetime,
    run: RunRef,
    count_boundary: Boundary | None,
    keeps: Keeps = NO_KEEPS,
    pinned: bool = False,
    *,
    cutoff: datetime | object | None = _NOW,
) -> Action | None:
    """The action for one run, or None to keep it as it is.

    ``count_boundary`` is the (started_at, id) of the oldest run kept by the count rule;
    runs strictly older than it exceed ``keep_runs``. ``keeps`` and ``pinned`` say which
    keep rules protect the run: then the action is ``keep`` (with the rule as its one
    reason) where it would have been a deletion — or, for a run kept by a rule whose log
    is oversized, ``truncate_log``; a pinned run is never deleted or truncated.
    ``cutoff``: ``age_cutoff(policy, now)`` when the caller computed it once for many runs.
    """
    return decider(policy, now, count_boundary, keeps, cutoff=cutoff)(run, pinned)


Decider = Callable[[RunRef, bool], "Action | None"]


def decider(
    policy: Policy,
    now: datetime,
    count_boundary: Boundary | None,
    keeps: Keeps = NO_KEEPS,
    *,
    cutoff: datetime | object | None = _NOW,
) -> Decider:
    """``decide`` for many runs of one pipeline: ``decider(...)(run, pinned)`` is
    ``decide(policy, now, run, count_boundary, keeps, pinned)``; everything that does not
    depend on the run is worked out once (the planner calls it for every candidate row)."""
    if cutoff is _NOW:
        cutoff = age_cutoff(policy, now)
    age = cutoff if isinstance(cutoff, datetime) else None
    boundary = count_boundary if policy.keep_runs is not None else None
    limit = policy.max_log_bytes
    active = frozenset(ACTIVE_STATUSES)
    failed_statuses = frozenset(FAILED_STATUSES)
    last = keeps.last_success if policy.keep_last_success else None
    failed = keeps.failed_from if policy.keep_failed else None
    reasons = {(c, a): _reasons(policy, c, a) for c in (False, True) for a in (False, True)}
    delete, keep, truncate = (
        ActionKind.ARCHIVE_AND_DELETE_RUN,
        ActionKind.KEEP,
        ActionKind.TRUNCATE_LOG,
    )
    new = tuple.__new__  # an ``Action`` without the named tuple's Python-level __new__
    pinned_reason = (KeepReason.PINNED.value,)

    b_start, b_id = boundary if boundary is not None else (None, _NIL)  # b_id: unused
    l_start, l_id = last if last is not None else (None, None)

    def kept_by(run_id: uuid.UUID, status: str, started: datetime) -> KeepReason | None:
        if started == l_start and run_id == l_id and status == _SUCCESS:
            return KeepReason.LAST_SUCCESS
        if failed is not None and status in failed_statuses and (started, run_id) >= failed:
            return KeepReason.KEEP_FAILED
        return None

    def oversized(log_file: str | None, log_size: int | None) -> bool:
        return (
            limit is not None and log_file is not None and log_size is not None and log_size > limit
        )

    def one(run: RunRef, pinned: bool) -> Action | None:
        # one unpacking instead of an attribute lookup per field: this runs per candidate
        run_id, _, status, _, started, _, _, log_file, _, log_size = run
        if status in active:
            return None
        by_count = b_start is not None and (
            started < b_start or (started == b_start and run_id < b_id)
        )
        by_age = age is not None and started < age
        if by_count or by_age:
            if pinned:
                return new(Action, (keep, run, pinned_reason))
            kept = kept_by(run_id, status, started)
            if kept is None:
                return new(Action, (delete, run, reasons[by_count, by_age]))
            if not oversized(log_file, log_size):
                return new(Action, (keep, run, (kept.value,)))
        if oversized(log_file, log_size):
            if pinned:
                return new(Action, (keep, run, pinned_reason))
            return new(
                Action,
                (truncate, run, (f"log is {log_size} bytes, limit {limit} bytes",)),
            )
        return None

    return one


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
