"""Schedule time math: cron (UTC, Europe/Berlin, both DST changes), interval anchors,
once_at, start/end/enabled, and the misfire rule (coalescing, staleness, huge windows)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fastflow.orchestration import schedules
from fastflow.orchestration.schedules import Due, due, next_fire, ticks_between
from fastflow.runs.specs import ScheduleSpec

BERLIN = "Europe/Berlin"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    """A Berlin wall time as UTC (aware datetimes in a fold never equal another zone's)."""
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(BERLIN), fold=fold).astimezone(UTC)


def ticks(spec: ScheduleSpec, after: datetime, until: datetime, tz: str = "UTC") -> list[datetime]:
    return list(ticks_between(spec, after, until, tz))


# --- cron -----------------------------------------------------------------------------


def test_cron_in_utc_is_after_exclusive_until_inclusive() -> None:
    spec = ScheduleSpec("k", cron="0 * * * *")
    got = ticks(spec, utc(2026, 5, 1, 10), utc(2026, 5, 1, 13))
    assert got == [utc(2026, 5, 1, 11), utc(2026, 5, 1, 12), utc(2026, 5, 1, 13)]
    assert all(t.tzinfo is UTC for t in got)


def test_cron_follows_the_schedule_timezone_over_the_default() -> None:
    spec = ScheduleSpec("k", cron="0 9 * * *", timezone=BERLIN)
    assert next_fire(spec, utc(2026, 1, 10), "UTC") == utc(2026, 1, 10, 8)  # CET
    assert next_fire(spec, utc(2026, 7, 10), "UTC") == utc(2026, 7, 10, 7)  # CEST
    default = ScheduleSpec("k", cron="0 9 * * *")
    assert next_fire(default, utc(2026, 1, 10), BERLIN) == utc(2026, 1, 10, 8)
    assert next_fire(default, utc(2026, 1, 10), "UTC") == utc(2026, 1, 10, 9)


def test_spring_forward_daily_0230_fires_at_0300_local() -> None:
    """2026-03-29, Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist."""
    spec = ScheduleSpec("k", cron="30 2 * * *")
    got = ticks(spec, utc(2026, 3, 27), utc(2026, 3, 31), BERLIN)
    assert got == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 0, 30),
    ]
    assert got[2] == berlin(2026, 3, 29, 3)


def test_spring_forward_gap_matches_collapse_into_one_tick() -> None:
    spec = ScheduleSpec("k", cron="*/30 * * * *")
    got = ticks(spec, berlin(2026, 3, 29, 1), berlin(2026, 3, 29, 4), BERLIN)
    local = [t.astimezone(ZoneInfo(BERLIN)).strftime("%H:%M%z") for t in got]
    assert local == ["01:30+0100", "03:00+0200", "03:30+0200", "04:00+0200"]


def test_fall_back_daily_0230_fires_once_at_the_first_occurrence() -> None:
    """2026-10-25, Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice."""
    spec = ScheduleSpec("k", cron="30 2 * * *")
    got = ticks(spec, utc(2026, 10, 23), utc(2026, 10, 27), BERLIN)
    assert got == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]
    assert got[2] == berlin(2026, 10, 25, 2, 30, fold=0)


def test_fall_back_repeated_hour_has_no_ticks_of_its_own() -> None:
    hourly = ScheduleSpec("k", cron="0 * * * *")
    got = ticks(hourly, berlin(2026, 10, 25, 1), berlin(2026, 10, 25, 4), BERLIN)
    assert got == [berlin(2026, 10, 25, 2), berlin(2026, 10, 25, 3), berlin(2026, 10, 25, 4)]
    assert got[1] - got[0] == timedelta(hours=2)  # 02:00 CEST, then 03:00 CET
    half = ScheduleSpec("k", cron="*/30 * * * *")
    got = ticks(half, berlin(2026, 10, 25, 1), berlin(2026, 10, 25, 3), BERLIN)
    local = [t.astimezone(ZoneInfo(BERLIN)).strftime("%H:%M%z") for t in got]
    assert local == ["01:30+0200", "02:00+0200", "02:30+0200", "03:00+0100"]


@pytest.mark.parametrize(
    ("day", "count"),
    [
        (utc(2026, 3, 28, 12), 1440),  # 1500 wall minutes, the 60 in the gap become 03:00
        (utc(2026, 10, 24, 12), 1380),  # 1380 wall minutes, the repeated 60 fire once
    ],
)
def test_every_minute_across_dst_never_repeats(day: datetime, count: int) -> None:
    got = ticks(ScheduleSpec("k", cron="* * * * *"), day, day + timedelta(days=1), BERLIN)
    assert all(a < b for a, b in itertools.pairwise(got))
    assert len(got) == count


def test_every_minute_in_the_repeated_hour_fires_each_wall_minute_once() -> None:
    spec = ScheduleSpec("k", cron="* * * * *")
    got = ticks(spec, berlin(2026, 10, 25, 0), berlin(2026, 10, 25, 4), BERLIN)
    walls = [t.astimezone(ZoneInfo(BERLIN)).replace(tzinfo=None) for t in got]
    assert len(walls) == len(set(walls)) == 4 * 60


def test_next_fire_inside_the_repeated_hour_waits_for_the_new_hour() -> None:
    spec = ScheduleSpec("k", cron="*/15 * * * *")
    now = berlin(2026, 10, 25, 2, 10, fold=1)  # 02:10 CET, second pass
    assert next_fire(spec, now, BERLIN) == berlin(2026, 10, 25, 3)


def test_due_in_the_repeated_hour_sees_the_first_pass_ticks() -> None:
    spec = ScheduleSpec("k", cron="*/15 * * * *", misfire_grace_seconds=3600)
    got = due(spec, berlin(2026, 10, 25, 2), berlin(2026, 10, 25, 2, 10, fold=1), BERLIN)
    assert got == Due(berlin(2026, 10, 25, 2, 45), 2, 0, berlin(2026, 10, 25, 3))


def test_due_across_the_spring_gap_fires_the_collapsed_tick() -> None:
    spec = ScheduleSpec("k", cron="30 2 * * *")
    got = due(spec, utc(2026, 3, 28, 12), berlin(2026, 3, 29, 3, 1), BERLIN)
    assert got.fire_at == berlin(2026, 3, 29, 3) and got.missed == 0


def test_cron_that_never_matches_has_no_next_fire() -> None:
    spec = ScheduleSpec("k", cron="0 0 30 2 *")
    assert next_fire(spec, utc(2026, 1, 1), "UTC") is None
    assert due(spec, utc(2025, 1, 1), utc(2026, 1, 1), "UTC") == Due(None, 0, 0, None)


# --- interval and once_at -------------------------------------------------------------


def test_interval_without_start_is_anchored_at_the_epoch() -> None:
    spec = ScheduleSpec("k", interval_seconds=3600)
    assert next_fire(spec, utc(2026, 5, 1, 10, 20), "UTC") == utc(2026, 5, 1, 11)
    seven = ScheduleSpec("k", interval_seconds=7)
    for got in itertools.islice(ticks_between(seven, utc(2026, 5, 1), utc(2027, 1, 1), "UTC"), 5):
        assert (got - schedules.EPOCH).total_seconds() % 7 == 0


def test_interval_ticks_do_not_depend_on_where_a_server_starts_looking() -> None:
    spec = ScheduleSpec("k", interval_seconds=7)
    a = ticks(spec, utc(2026, 5, 1, 0, 0, 1), utc(2026, 5, 1, 0, 2))
    b = ticks(spec, utc(2026, 5, 1, 0, 0, 30), utc(2026, 5, 1, 0, 2))
    assert a[-len(b) :] == b


def test_interval_ticks_end_where_dates_end() -> None:
    """An outside audit: a huge interval overflowed ``anchor + k × step`` into a traceback
    in ``fastflow schedules``, the API and every scheduler tick."""
    from fastflow.runs.pipeline_config import MAX_INTERVAL_SECONDS

    start = datetime(9998, 12, 31, tzinfo=UTC)
    spec = ScheduleSpec("k", interval_seconds=MAX_INTERVAL_SECONDS, start=start)
    assert next_fire(spec, utc(2026, 1, 1), "UTC") == start
    assert next_fire(spec, start, "UTC") is None
    assert ticks(spec, utc(2026, 1, 1), datetime(9999, 12, 31, tzinfo=UTC)) == [start]
    century = ScheduleSpec("k", interval_seconds=MAX_INTERVAL_SECONDS)
    assert next_fire(century, utc(2026, 1, 1), "UTC") is not None


def test_interval_with_start_is_anchored_at_start_and_never_before_it() -> None:
    start = utc(2026, 5, 1, 10, 0, 5)
    spec = ScheduleSpec("k", interval_seconds=60, start=start)
    assert ticks(spec, utc(2026, 4, 1), utc(2026, 5, 1, 10, 2, 5)) == [
        start,
        utc(2026, 5, 1, 10, 1, 5),
        utc(2026, 5, 1, 10, 2, 5),
    ]
    assert next_fire(spec, utc(2026, 5, 1, 10, 30), "UTC") == utc(2026, 5, 1, 10, 30, 5)


def test_end_bounds_every_kind() -> None:
    end = utc(2026, 5, 1, 12)
    for spec in (
        ScheduleSpec("k", cron="0 * * * *", end=end),
        ScheduleSpec("k", interval_seconds=3600, end=end),
    ):
        assert ticks(spec, utc(2026, 5, 1, 10), utc(2026, 5, 2))[-1] == end
        assert next_fire(spec, end, "UTC") is None
        assert due(spec, end, utc(2026, 5, 2), "UTC") == Due(None, 0, 0, None)


def test_cron_start_is_inclusive() -> None:
    spec = ScheduleSpec("k", cron="0 * * * *", start=utc(2026, 5, 1, 12))
    assert next_fire(spec, utc(2026, 1, 1), "UTC") == utc(2026, 5, 1, 12)


def test_once_at_is_a_single_tick() -> None:
    at = utc(2026, 6, 1, 9, 30)
    spec = ScheduleSpec("k", once_at=at)
    assert ticks(spec, utc(2026, 1, 1), utc(2027, 1, 1)) == [at]
    assert next_fire(spec, utc(2026, 1, 1), "UTC") == at
    assert next_fire(spec, at, "UTC") is None
    assert due(spec, utc(2026, 6, 1), at + timedelta(seconds=10), "UTC") == Due(at, 0, 0, None)
    assert (
        ticks(ScheduleSpec("k", once_at=at, end=utc(2026, 6, 1)), utc(2026, 1, 1), utc(2027, 1, 1))
        == []
    )


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec("k", cron="* * * * *", enabled=False),
        ScheduleSpec("k", interval_seconds=1, enabled=False),
        ScheduleSpec("k", once_at=utc(2026, 6, 1), enabled=False),
    ],
)
def test_disabled_schedules_never_fire(spec: ScheduleSpec) -> None:
    assert ticks(spec, utc(2026, 1, 1), utc(2027, 1, 1)) == []
    assert next_fire(spec, utc(2026, 1, 1), "UTC") is None
    assert due(spec, utc(2026, 1, 1), utc(2027, 1, 1), "UTC") == Due(None, 0, 0, None)


def test_ticks_are_lazy() -> None:
    spec = ScheduleSpec("k", interval_seconds=1)
    it = ticks_between(spec, utc(2026, 1, 1), utc(2027, 1, 1), "UTC")
    assert isinstance(it, Iterator)
    assert list(itertools.islice(it, 2)) == [utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1, 0, 0, 2)]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_fire(ScheduleSpec("k", interval_seconds=1), datetime(2026, 1, 1), "UTC")
    with pytest.raises(ValueError, match="no cron"):
        next_fire(ScheduleSpec("k"), utc(2026, 1, 1), "UTC")
    with pytest.raises(ValueError, match="interval_seconds"):
        next_fire(ScheduleSpec("k", interval_seconds=0), utc(2026, 1, 1), "UTC")


# --- the misfire rule -----------------------------------------------------------------

MINUTELY = [
    ScheduleSpec("k", cron="* * * * *", misfire_grace_seconds=300),
    ScheduleSpec("k", interval_seconds=60, misfire_grace_seconds=300),
]


@pytest.mark.parametrize("spec", MINUTELY)
def test_missed_ticks_within_grace_coalesce_into_one_run(spec: ScheduleSpec) -> None:
    got = due(spec, utc(2026, 5, 1, 10), utc(2026, 5, 1, 10, 3, 30), "UTC")
    assert got == Due(
        utc(2026, 5, 1, 10, 3), missed=2, skipped_stale=0, next_at=utc(2026, 5, 1, 10, 4)
    )


@pytest.mark.parametrize("spec", MINUTELY)
def test_a_tick_exactly_now_fires(spec: ScheduleSpec) -> None:
    got = due(spec, utc(2026, 5, 1, 10), utc(2026, 5, 1, 10, 1), "UTC")
    assert got == Due(utc(2026, 5, 1, 10, 1), 0, 0, utc(2026, 5, 1, 10, 2))


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec("k", cron="*/10 * * * *", misfire_grace_seconds=300),
        ScheduleSpec("k", interval_seconds=600, misfire_grace_seconds=300),
    ],
)
def test_grace_is_inclusive(spec: ScheduleSpec) -> None:
    now = utc(2026, 5, 1, 10, 15)  # the 10:10 tick is exactly 300 s old
    assert due(spec, utc(2026, 5, 1, 10), now, "UTC").fire_at == utc(2026, 5, 1, 10, 10)
    later = due(spec, utc(2026, 5, 1, 10), now + timedelta(microseconds=1), "UTC")
    assert later == Due(None, 0, 1, utc(2026, 5, 1, 10, 20))


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec("k", cron="*/5 * * * *", misfire_grace_seconds=60),
        ScheduleSpec("k", interval_seconds=300, misfire_grace_seconds=60),
    ],
)
def test_stale_ticks_are_skipped_and_counted(spec: ScheduleSpec) -> None:
    got = due(spec, utc(2026, 5, 1, 10), utc(2026, 5, 1, 10, 12), "UTC")  # 10:05, 10:10
    assert got == Due(None, missed=0, skipped_stale=2, next_at=utc(2026, 5, 1, 10, 15))


@pytest.mark.parametrize("spec", MINUTELY)
def test_no_history_means_nothing_in_the_past_fires(spec: ScheduleSpec) -> None:
    assert due(spec, None, utc(2026, 5, 1, 10), "UTC") == Due(None, 0, 0, utc(2026, 5, 1, 10, 1))
    assert due(spec, utc(2026, 5, 1, 10, 0, 30), utc(2026, 5, 1, 10, 0, 30), "UTC").fire_at is None


def test_a_month_offline_with_a_one_second_interval_is_counted_arithmetically() -> None:
    spec = ScheduleSpec("k", interval_seconds=1)
    month = 30 * 86400
    got = due(spec, utc(2026, 1, 1), utc(2026, 1, 31), "UTC")
    assert got == Due(utc(2026, 1, 31), month - 1, 0, utc(2026, 1, 31, 0, 0, 1))
    stale = ScheduleSpec("k", interval_seconds=1, misfire_grace_seconds=0)
    now = utc(2026, 1, 31) + timedelta(milliseconds=500)
    assert due(stale, utc(2026, 1, 1), now, "UTC").skipped_stale == month


def test_cron_counts_stop_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedules, "CRON_COUNT_CAP", 50)
    spec = ScheduleSpec("k", cron="* * * * *", misfire_grace_seconds=10)
    fired = due(spec, utc(2026, 1, 1), utc(2026, 1, 31), "UTC")
    assert fired.fire_at == utc(2026, 1, 31) and fired.missed == 50
    stale = due(spec, utc(2026, 1, 1), utc(2026, 1, 31, 0, 0, 30), "UTC")
    assert stale == Due(None, 0, 50, utc(2026, 1, 31, 0, 1))
