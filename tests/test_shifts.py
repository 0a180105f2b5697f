"""The last complete shift and the current one, at any hour, for shifts crossing midnight
and across DST changes: checked against a brute-force reading of the wall clock."""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from presence_core.shifts import (
    TeamSettings,
    current_shift,
    first_instant_at,
    format_work_days,
    last_complete_shift,
    parse_work_days,
    shift_window,
    whole_day,
    zone_named,
)

# zones with every kind of change: none, an hour at 02:00, at midnight (Havana), back
# across midnight (Beirut), half an hour (Lord Howe), southern summers, odd offsets
ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Havana",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Beirut",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)
MINUTE = timedelta(minutes=1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class WallClock:
    """The wall clock of a zone read every UTC minute over a stretch of time: the
    reference knows nothing of folds or offsets, only what the clock shows."""

    def __init__(self, zone: str, around: datetime, days_back: int = 3) -> None:
        self.zone = ZoneInfo(zone)
        first = around.replace(second=0, microsecond=0) - timedelta(days=days_back, hours=12)
        self.instants = [first + k * MINUTE for k in range((days_back + 3) * 24 * 60)]
        walls = [t.astimezone(self.zone).replace(tzinfo=None) for t in self.instants]
        self.walls = walls
        self.highest = []  # the latest reading so far: rises, so it can be bisected
        top = walls[0]
        for wall in walls:
            top = max(top, wall)
            self.highest.append(top)

    def first_showing(self, wall: datetime) -> datetime:
        index = bisect.bisect_left(self.highest, wall)
        assert 0 < index < len(self.instants), "outside the stretch read"
        return self.instants[index]

    def shifts(self, s: TeamSettings, days: list[date]) -> list[tuple[date, datetime, datetime]]:
        out = []
        for day in days:
            start = self.first_showing(datetime.combine(day, s.shift_start))
            end_day = day + timedelta(days=1) if s.shift_end <= s.shift_start else day
            end = self.first_showing(datetime.combine(end_day, s.shift_end))
            out.append((day, start, end))
        return out


def reference(s: TeamSettings, now: datetime):
    back = 2 if s.work_days is None else 9  # a week and a bit: one working day is enough
    clock = WallClock(s.time_zone, now, days_back=back + 1)
    today = now.astimezone(ZoneInfo(s.time_zone)).date()
    days = [today + timedelta(days=k) for k in range(-back, 1)]
    days = [d for d in days if s.work_days is None or d.weekday() in s.work_days]
    shifts = clock.shifts(s, days)
    done = [w for w in shifts if w[2] <= now and w[2] > w[1]]
    running = [w for w in shifts if w[1] <= now < w[2]]
    return done[-1], (running[-1] if running else None)


minutes_of_day = st.builds(time, st.integers(0, 23), st.integers(0, 59))
team_settings = st.builds(
    TeamSettings, st.just("t"), st.sampled_from(ZONES), minutes_of_day, minutes_of_day
)
instants = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(team_settings, instants)
# 01:00 UTC: a day shift in Europe has not begun, a night shift in Berlin is under way
@example(TeamSettings("t", "Europe/Berlin", time(22), time(6)), utc(2026, 6, 15, 1))
@example(TeamSettings("t", "Europe/London", time(9), time(17)), utc(2026, 6, 15, 1))
# night shifts on the nights the clocks change, and starts inside the skipped hour
@example(TeamSettings("t", "Europe/Berlin", time(22), time(6)), utc(2026, 3, 29, 5))
@example(TeamSettings("t", "Europe/Berlin", time(22), time(6)), utc(2026, 10, 25, 4, 59))
@example(TeamSettings("t", "America/New_York", time(2, 30), time(10)), utc(2026, 3, 8, 16))
@example(TeamSettings("t", "America/New_York", time(20), time(1, 30)), utc(2026, 11, 1, 5, 30))
@example(TeamSettings("t", "Asia/Beirut", time(23, 30), time(7)), utc(2025, 10, 26, 6))
# a shift squeezed to nothing by the skipped hour, and an end exactly at now
@example(TeamSettings("t", "Europe/Berlin", time(2, 10), time(2, 40)), utc(2026, 3, 29, 2))
@example(TeamSettings("t", "UTC", time(9), time(17)), utc(2026, 6, 15, 17))
# the whole day
@example(TeamSettings("t", "Pacific/Chatham", time(0), time(0)), utc(2026, 4, 5, 0, 1))
def test_last_complete_and_current_shift_agree_with_the_wall_clock(s, now):
    done, running = reference(s, now)
    last = last_complete_shift(s, now)
    assert (last.day, last.start, last.end) == done
    assert last.end <= now and last.seconds > 0
    current = current_shift(s, now)
    assert (current and (current.day, current.start, current.end)) == running


work_days = st.frozensets(st.integers(0, 6), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(team_settings, work_days, instants)
# a Monday morning at 01:00 UTC: Europe's Mon-Fri day shift last ended on Friday
@example(
    TeamSettings("t", "Europe/London", time(9), time(17)), frozenset(range(5)), utc(2026, 12, 7, 1)
)
# a Sunday: the Mon-Fri night desk's last shift began on Friday night
@example(
    TeamSettings("t", "Europe/Berlin", time(22), time(6)), frozenset(range(5)), utc(2026, 12, 6, 4)
)
def test_working_days_agree_with_the_wall_clock(s, days, now):
    s = TeamSettings(s.team, s.time_zone, s.shift_start, s.shift_end, None, days)
    done, running = reference(s, now)
    last = last_complete_shift(s, now)
    assert (last.day, last.start, last.end) == done
    assert last.day.weekday() in days
    current = current_shift(s, now)
    assert (current and (current.day, current.start, current.end)) == running


def test_working_days_are_read_and_written_in_week_order():
    assert parse_work_days("Mon-Fri") == frozenset(range(5))
    assert parse_work_days(" sun-tue, Thu ") == frozenset({6, 0, 1, 3})  # wraps past Sunday
    assert parse_work_days("Saturday") == frozenset({5})
    assert parse_work_days("") is parse_work_days("daily") is parse_work_days("Mon-Sun") is None
    assert format_work_days(frozenset({4, 0, 2})) == "Mon,Wed,Fri"
    assert format_work_days(None) is None
    for text in ("Mon-Fri", "Sun-Tue,Thu", "Sat"):
        days = parse_work_days(text)
        assert parse_work_days(format_work_days(days)) == days
    for bad in ("Mon-", "Funday", "Mon-Wed-Fri", "1-5"):
        with pytest.raises(ValueError, match="working days"):
            parse_work_days(bad)
    with pytest.raises(ValueError, match="no working day"):
        TeamSettings("t", "UTC", time(9), time(17), None, frozenset())


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ZONES), instants)
def test_first_instant_at_is_the_first_minute_the_clock_shows_it(zone, moment):
    wall = moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None, second=0, microsecond=0)
    wall += timedelta(minutes=(moment.microsecond % 180) - 90)  # near, maybe in a gap
    clock = WallClock(zone, moment)
    assert first_instant_at(ZoneInfo(zone), wall) == clock.first_showing(wall)


def test_a_night_shift_is_an_hour_shorter_when_the_clocks_go_forward():
    night = TeamSettings("Night Desk", "Europe/Berlin", time(22), time(6), 70.0)
    assert night.crosses_midnight and not night.whole_day
    spring = shift_window(night, date(2026, 3, 28))
    assert (spring.start, spring.end) == (utc(2026, 3, 28, 21), utc(2026, 3, 29, 4))
    assert spring.seconds == 7 * 3600
    autumn = shift_window(night, date(2026, 10, 24))
    assert autumn.seconds == 9 * 3600
    # 01:14 UTC on a Monday: Sunday night's shift is still running, Saturday's is complete
    now = utc(2026, 6, 15, 1, 14)
    assert current_shift(night, now).day == date(2026, 6, 14)
    assert last_complete_shift(night, now).day == date(2026, 6, 13)


def test_a_team_without_settings_uses_the_whole_day():
    plain = whole_day("Sales", "America/Chicago")
    assert plain.whole_day and plain.crosses_midnight
    last = last_complete_shift(plain, utc(2026, 6, 15, 1, 14))  # Sunday 20:14 in Chicago
    assert last.day == date(2026, 6, 13) and last.seconds == 24 * 3600
    assert current_shift(plain, utc(2026, 6, 15, 1, 14)).day == date(2026, 6, 14)


def test_zones_are_iana_names_only():
    assert zone_named("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    for bad in ("", "Mars/Olympus", "America", "../etc/passwd", "Europe/Berlin "):
        with pytest.raises(ValueError, match="not a known time zone"):
            zone_named(bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        last_complete_shift(whole_day("t", "UTC"), datetime(2026, 1, 1))
