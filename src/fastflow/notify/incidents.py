"""PURE: decide what to announce from the previous incident, what just happened and now.

Backups (``decide``):

An *incident* starts with the first cleanup pass that has backup failures and ends with
the first later pass that has none. Guarantees (pinned by ``tests/test_notify_incidents``):

- the start of an incident is announced once (``FAILURE``);
- a pass whose failing runs are all already known announces nothing, except a
  ``REMINDER`` when the last announcement is at least ``REMINDER_INTERVAL`` old — so a
  lasting incident is announced at most about once a day;
- a pass with a failing run that the incident did not know yet announces ``GROWN``;
- the first pass without failures closes the incident and announces ``RECOVERY`` once.

Keys identify what failed: the run id, or ``PASS_KEY`` for a failure of the whole pass
(for example S3 backup enabled but not configured).

Runs (``decide_run``), one incident per pipeline, pinned by ``tests/notify/test_notify_runs``:
the first final FAILED/TIMEOUT run opens it (``RUN_FAILURE``); further failures send
nothing but a ``RUN_REMINDER`` once the last announcement is ``reminder_interval`` old; the
next SUCCESS closes it (``RUN_RECOVERY``). A pipeline's ``notify.on_failure: false`` opens
nothing and reminds of nothing, ``notify.on_recovery: false`` closes silently.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

PASS_KEY = "pass"
# "At most once a day": one hour of slack so that a nightly pass that happens to start a
# few seconds earlier than the night before still reminds every night, not every other.
REMINDER_INTERVAL = timedelta(hours=23)
MAX_KNOWN_KEYS = 2000  # bounds the stored state; beyond it, growth is judged by count


class Kind(enum.StrEnum):
    """What a notification says. ``TEST`` is never produced by ``decide``."""

    FAILURE = "failure"
    GROWN = "grown"
    REMINDER = "reminder"
    RECOVERY = "recovery"
    TEST = "test"
    RUN_FAILURE = "run_failure"
    RUN_REMINDER = "run_reminder"
    RUN_RECOVERY = "run_recovery"


@dataclass(frozen=True)
class Incident:
    """The state persisted between passes while backups keep failing."""

    opened_at: datetime
    last_announced_at: datetime
    known: frozenset[str]
    failing: frozenset[str]
    announcements: int = 1


@dataclass(frozen=True)
class Decision:
    """``kind`` is None when nothing is to be sent. ``incident`` is the state to keep (None
    when no incident is open afterwards); ``ended`` is the incident a recovery closed."""

    kind: Kind | None
    incident: Incident | None
    new_keys: frozenset[str] = frozenset()
    ended: Incident | None = None


def decide(
    previous: Incident | None,
    failing: Iterable[str],
    now: datetime,
    *,
    reminder_interval: timedelta = REMINDER_INTERVAL,
) -> Decision:
    """What to announce after a pass whose failures have the keys ``failing``."""
    current = _bounded(frozenset(failing))
    if not current:
        if previous is None:
            return Decision(None, None)
        return Decision(Kind.RECOVERY, None, ended=previous)
    if previous is None:
        return Decision(
            Kind.FAILURE,
            Incident(now, now, current, current),
            new_keys=current,
        )
    new = current - previous.known
    if len(previous.known) >= MAX_KNOWN_KEYS and len(current) <= len(previous.failing):
        new = frozenset()  # the stored set is full: only a larger pass counts as growth
    if new:
        grown = replace(
            previous,
            last_announced_at=now,
            known=_bounded(previous.known | current),
            failing=current,
            announcements=previous.announcements + 1,
        )
        return Decision(Kind.GROWN, grown, new_keys=new)
    if now - previous.last_announced_at >= reminder_interval:
        reminded = replace(
            previous,
            last_announced_at=now,
            failing=current,
            announcements=previous.announcements + 1,
        )
        return Decision(Kind.REMINDER, reminded)
    return Decision(None, replace(previous, failing=current))


def _bounded(keys: frozenset[str]) -> frozenset[str]:
    if len(keys) <= MAX_KNOWN_KEYS:
        return keys
    return frozenset(sorted(keys)[:MAX_KNOWN_KEYS])


# --- runs ------------------------------------------------------------------------------------

RUN_FAILED_STATUSES = ("FAILED", "TIMEOUT")
RUN_SUCCESS_STATUS = "SUCCESS"
MAX_RECENT_RUNS = 20  # failed run ids remembered, so that a run reported twice counts once


@dataclass(frozen=True)
class RunIncident:
    """The state of one pipeline's failing streak; ``recent`` ends with the latest run."""

    opened_at: datetime
    last_announced_at: datetime
    failures: int
    recent: tuple[str, ...]
    last_status: str
    announcements: int = 1

    @property
    def last_run_id(self) -> str:
        return self.recent[-1] if self.recent else ""


@dataclass(frozen=True)
class RunDecision:
    """``kind`` is None when nothing is to be sent; ``incident`` is the state to keep (None
    when no incident is open afterwards); ``ended`` is the incident a success closed."""

    kind: Kind | None
    incident: RunIncident | None
    ended: RunIncident | None = None
    counted: bool = False  # a failure the open incident did not know yet (not a repeat)


def decide_run(
    previous: RunIncident | None,
    run_id: str,
    status: str,
    now: datetime,
    *,
    on_failure: bool = True,
    on_recovery: bool = True,
    reminder_interval: timedelta = REMINDER_INTERVAL,
) -> RunDecision:
    """What to announce after the final attempt ``run_id`` of a pipeline ended ``status``."""
    if status == RUN_SUCCESS_STATUS:
        if previous is None:
            return RunDecision(None, None)
        return RunDecision(Kind.RUN_RECOVERY if on_recovery else None, None, ended=previous)
    if status not in RUN_FAILED_STATUSES or (previous is not None and run_id in previous.recent):
        return RunDecision(None, previous)  # neither failure nor success, or seen before
    if previous is None:
        if not on_failure:
            return RunDecision(None, None)
        return RunDecision(Kind.RUN_FAILURE, RunIncident(now, now, 1, (run_id,), status))
    grown = replace(
        previous,
        failures=previous.failures + 1,
        recent=(*previous.recent, run_id)[-MAX_RECENT_RUNS:],
        last_status=status,
    )
    if on_failure and now - previous.last_announced_at >= reminder_interval:
        reminded = replace(grown, last_announced_at=now, announcements=grown.announcements + 1)
        return RunDecision(Kind.RUN_REMINDER, reminded, counted=True)
    return RunDecision(None, grown, counted=True)
