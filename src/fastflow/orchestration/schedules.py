"""When a schedule fires: pure functions of a ``ScheduleSpec`` and times passed in.

All datetimes in and out are timezone-aware; results are UTC. Naive inputs raise
``ValueError``, as do a spec with no ``cron``/``interval_seconds``/``once_at`` and a
non-positive interval; an invalid cron expression raises croniter's ``ValueError``.

Cron is evaluated on the local wall clock of ``spec.timezone`` (else ``default_tz``), and
every wall-clock match fires at most once:

* fall-back (a wall time occurs twice, Europe/Berlin 2026-10-25 02:00–03:00): the tick
  fires at the FIRST occurrence (CEST) only; the repeated hour has no ticks of its own.
  A daily 02:30 job fires once (00:30 UTC); an hourly job fires at 02:00 CEST, then
  03:00 CET (two real hours apart). croniter alone (aware datetimes) would fire twice.
* spring-forward (a wall time does not exist, Europe/Berlin 2026-03-29 02:00–03:00):
  the tick fires at the first instant after the gap — 03:00 local (01:00 UTC) — as
  croniter does; all matches inside the gap and a 03:00 match collapse into that one
  tick. A daily 02:30 job is never silently skipped.

Interval ticks are ``anchor + k × interval_seconds`` (k >= 0 when ``spec.start`` is the
anchor), the anchor being ``spec.start`` or else the Unix epoch, so every server
computes identical ticks. No tick is ever before ``spec.start`` or after ``spec.end``;
a disabled schedule has none.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from fastflow.runs.specs import ScheduleSpec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CRON_COUNT_CAP = 10_000  # ~0.3 s of croniter; a count equal to it is a lower bound
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True)
class Due:
    """What to do now. ``fire_at``: the one tick to run now (None: nothing). ``missed``:
    ticks coalesced into it (strictly between ``last_fired`` and ``fire_at``).
    ``skipped_stale``: ticks dropped because even the latest was older than the grace.
    For cron both counts stop at ``CRON_COUNT_CAP`` (then read "at least"); for interval
    and once_at schedules they are exact. ``next_at``: the first tick after now."""

    fire_at: datetime | None
    missed: int
    skipped_stale: int
    next_at: datetime | None


def ticks_between(
    spec: ScheduleSpec, after: datetime, until: datetime, default_tz: str
) -> Iterator[datetime]:
    """Every fire time t with ``after < t <= until``, in increasing order, without
    duplicates, lazily (memory is O(1) whatever the window)."""
    return _ticks(spec, _utc(after), _utc(until), default_tz)


def next_fire(spec: ScheduleSpec, now: datetime, default_tz: str) -> datetime | None:
    """The first tick strictly after ``now``; None once the schedule has ended, is
    disabled or can never fire again."""
    return next(_ticks(spec, _utc(now), None, default_tz), None)


def due(spec: ScheduleSpec, last_fired: datetime | None, now: datetime, default_tz: str) -> Due:
    """The misfire rule. The ticks in ``(last_fired, now]`` are coalesced into ONE run at
    the latest of them if it is at most ``misfire_grace_seconds`` old; otherwise none
    fires and all are counted in ``skipped_stale``.

    ``last_fired=None`` means the schedule starts now: nothing in the past (nor a tick
    exactly at ``now``) fires. Callers persist a baseline (``now`` when a schedule is
    first seen, then each fired tick) and pass it as ``last_fired``."""
    now = _utc(now)
    next_at = next_fire(spec, now, default_tz)
    if last_fired is None or _utc(last_fired) >= now or not spec.enabled:
        return Due(fire_at=None, missed=0, skipped_stale=0, next_at=next_at)
    last = _utc(last_fired)
    grace = timedelta(seconds=max(0, spec.misfire_grace_seconds))
    fire_at = _latest(spec, max(last, now - grace - _TINY), now, default_tz)
    if fire_at is None:
        stale = _count(spec, last, now, default_tz)
        return Due(fire_at=None, missed=0, skipped_stale=stale, next_at=next_at)
    missed = _count(spec, last, fire_at - _TINY, default_tz)
    return Due(fire_at=fire_at, missed=missed, skipped_stale=0, next_at=next_at)


# --- bounds and dispatch ------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()}: schedules need aware times")
    return value.astimezone(UTC)


def _bounds(
    spec: ScheduleSpec, after: datetime, until: datetime | None
) -> tuple[datetime, datetime | None]:
    """``(after, until)`` narrowed by ``start``/``end``: ticks t with lo < t <= hi."""
    lo = after if spec.start is None else max(after, _utc(spec.start) - _TINY)
    hi = until
    if spec.end is not None:
        end = _utc(spec.end)
        hi = end if hi is None else min(hi, end)
    return lo, hi


def _zone(spec: ScheduleSpec, default_tz: str) -> ZoneInfo:
    return ZoneInfo(spec.timezone or default_tz)


def _ticks(
    spec: ScheduleSpec, after: datetime, until: datetime | None, default_tz: str
) -> Iterator[datetime]:
    if spec.cron is None and spec.interval_seconds is None and spec.once_at is None:
        raise ValueError(f"schedule {spec.key!r} has no cron, interval_seconds or once_at")
    lo, hi = _bounds(spec, after, until)
    if not spec.enabled or (hi is not None and hi <= lo):
        return iter(())
    if spec.cron is not None:
        return _cron_ticks(spec.cron, _zone(spec, default_tz), lo, hi)
    if spec.interval_seconds is not None:
        return _interval_ticks(spec, lo, hi)
    assert spec.once_at is not None
    once = _utc(spec.once_at)
    return iter([once] if lo < once and (hi is None or once <= hi) else [])


def _latest(
    spec: ScheduleSpec, after: datetime, until: datetime, default_tz: str
) -> datetime | None:
    """The last tick in ``(after, until]``, found without walking the window."""
    lo, hi = _bounds(spec, after, until)
    if not spec.enabled or hi is None or hi <= lo:
        return None
    if spec.cron is not None:
        return _cron_latest(spec.cron, _zone(spec, default_tz), lo, hi)
    if spec.interval_seconds is not None:
        ks = _interval_range(spec, lo, hi)
        step, anchor = _interval(spec)
        return anchor + ks[-1] * step if ks else None
    return next(_ticks(spec, after, until, default_tz), None)  # once_at: at most one


def _count(spec: ScheduleSpec, after: datetime, until: datetime, default_tz: str) -> int:
    """How many ticks in ``(after, until]``: arithmetic for intervals, else counted up
    to ``CRON_COUNT_CAP``."""
    if spec.enabled and spec.cron is None and spec.interval_seconds is not None:
        lo, hi = _bounds(spec, after, until)
        return len(_interval_range(spec, lo, hi)) if hi is not None and lo < hi else 0
    return sum(1 for _ in itertools.islice(_ticks(spec, after, until, default_tz), CRON_COUNT_CAP))


# --- intervals ------------------------------------------------------------------------


def _interval(spec: ScheduleSpec) -> tuple[timedelta, datetime]:
    """``(step, anchor)``."""
    assert spec.interval_seconds is not None
    if spec.interval_seconds <= 0:
        raise ValueError(f"schedule {spec.key!r}: interval_seconds must be > 0")
    anchor = EPOCH if spec.start is None else _utc(spec.start)
    return timedelta(seconds=spec.interval_seconds), anchor


def _first_k(spec: ScheduleSpec, lo: datetime) -> int:
    """The smallest k with ``anchor + k × step > lo`` (and k >= 0 when anchored at start)."""
    step, anchor = _interval(spec)
    first = (lo - anchor) // step + 1  # exact: timedelta // timedelta is integer math
    return first if spec.start is None else max(first, 0)


def _interval_range(spec: ScheduleSpec, lo: datetime, hi: datetime) -> range:
    """The k of the ticks ``anchor + k × step`` in ``(lo, hi]``."""
    step, anchor = _interval(spec)
    first = _first_k(spec, lo)
    return range(first, max(first, (hi - anchor) // step + 1))


def _interval_ticks(spec: ScheduleSpec, lo: datetime, hi: datetime | None) -> Iterator[datetime]:
    """The ticks in ``(lo, hi]``; they end where dates end (the year 9999)."""
    step, anchor = _interval(spec)
    ks = itertools.count(_first_k(spec, lo)) if hi is None else _interval_range(spec, lo, hi)
    for k in ks:
        try:
            tick = anchor + k * step
        except OverflowError:
            return
        yield tick


# --- cron on the local wall clock -----------------------------------------------------


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    """The naive local wall time of ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _wall_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """The instant a wall-clock match fires: its first occurrence when repeated, the end
    of the gap when skipped. Non-decreasing in ``wall``."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(first, zone) == wall:
        return first
    return _gap_end(wall, zone)


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant after the clock skipped over ``wall`` (binary search, 1 s)."""
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())  # before the jump
    hi = int(wall.replace(tzinfo=zone, fold=0).timestamp())  # after the jump
    after_offset = datetime.fromtimestamp(hi, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _offset(local: datetime) -> timedelta:
    offset = local.utcoffset()
    assert offset is not None
    return offset


def _cron_ticks(expr: str, zone: tzinfo, lo: datetime, hi: datetime | None) -> Iterator[datetime]:
    # Every wall time w with _wall_to_utc(w) > lo is later than _wall(lo) (monotonic map).
    it = croniter(expr, _wall(lo, zone))
    last = lo
    while True:
        try:
            wall = it.get_next(datetime)
        except CroniterBadDateError:  # no match within croniter's search horizon
            return
        tick = _wall_to_utc(wall, zone)
        if hi is not None and tick > hi:
            return
        if tick > last:  # drops gap matches collapsed into one instant
            yield tick
            last = tick


def _cron_latest(expr: str, zone: tzinfo, lo: datetime, hi: datetime) -> datetime | None:
    """The last tick in ``(lo, hi]``, walking back from ``hi``."""
    local = hi.astimezone(zone)
    start = local.replace(tzinfo=None, fold=0)
    if local.fold:  # in a repeated hour: first occurrences up to its end are <= hi
        start += _offset(local.replace(fold=0)) - _offset(local)
    it = croniter(expr, start + _TINY)  # get_prev is strict; + 1 µs makes it inclusive
    while True:
        try:
            wall = it.get_prev(datetime)
        except CroniterBadDateError:
            return None
        tick = _wall_to_utc(wall, zone)
        if tick <= lo:
            return None
        if tick <= hi:
            return tick
