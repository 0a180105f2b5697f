"""Teams' shifts in their own time zones, and which window is "the last complete shift".

A team works one shift a day, from ``shift_start`` to ``shift_end`` on the wall clock
of its zone. An end before the start means the shift crosses midnight (22:00–06:00
ends the next morning); an end equal to the start means the whole day (00:00–00:00,
what a team with no settings gets, in the display zone). The shift *of* local day D
is the one that begins on D.

Daylight-saving changes: a local time is read as the first instant at which the
wall clock shows that time or later. On the night the clocks go forward a 02:30
start (a time that does not exist) begins at 03:00, new time; on the night they go
back a 01:30 end is the first 01:30. So a night shift is an hour shorter or longer
on those nights, as it is for the people working it.

Everything here is pure: settings and an instant in, UTC datetimes out.
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "WHOLE_DAY",
    "ShiftWindow",
    "TeamSettings",
    "current_shift",
    "first_instant_at",
    "last_complete_shift",
    "shift_window",
    "whole_day",
    "zone_named",
]

WHOLE_DAY = (time(0, 0), time(0, 0))
"""(shift_start, shift_end) of a team with no shift: midnight to midnight."""


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone called ``name`` (``Europe/Berlin``, ``UTC``); ValueError, with a
    message fit for a user, for anything else (typos, paths, ``localtime``)."""
    if not isinstance(name, str) or name not in _known_zones():
        raise ValueError(f"{name!r} is not a known time zone (an IANA name such as Europe/Berlin)")
    return ZoneInfo(name)


@dataclass(frozen=True)
class TeamSettings:
    """A team's zone, daily shift and target availability (a percentage, or None)."""

    team: str
    time_zone: str
    shift_start: time
    shift_end: time
    target_pct: float | None = None

    @property
    def zone(self) -> ZoneInfo:
        return zone_named(self.time_zone)

    @property
    def crosses_midnight(self) -> bool:
        """True when the shift ends on the day after it begins (the whole day included)."""
        return self.shift_end <= self.shift_start

    @property
    def whole_day(self) -> bool:
        return self.shift_end == self.shift_start


def whole_day(team: str, time_zone: str) -> TeamSettings:
    """The settings of a team nobody has configured: the whole day in ``time_zone``."""
    return TeamSettings(team, time_zone, *WHOLE_DAY)


@dataclass(frozen=True)
class ShiftWindow:
    """One occurrence of a team's shift: the local ``day`` it begins on, UTC bounds."""

    day: date
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def first_instant_at(zone: ZoneInfo, wall: datetime) -> datetime:
    """The first UTC instant at which the wall clock of ``zone`` shows ``wall`` (naive)
    or later: the instant itself for an ordinary time, the first of the two for a
    time the clocks repeat, and the moment of the change for a time they skip."""
    wall = wall.replace(tzinfo=None)
    guess = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if guess.astimezone(zone).replace(tzinfo=None) == wall:
        return guess
    # ``wall`` falls in a gap: the change happened after the earlier reading (fold=1,
    # the new offset) and at or before the later one; find its second by bisection
    low = math.floor(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = math.ceil(guess.timestamp())
    after = guess.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def shift_window(settings: TeamSettings, day: date) -> ShiftWindow:
    """The shift that begins on local ``day``, in UTC."""
    zone = settings.zone
    start = first_instant_at(zone, datetime.combine(day, settings.shift_start))
    end_day = day + timedelta(days=1) if settings.crosses_midnight else day
    end = first_instant_at(zone, datetime.combine(end_day, settings.shift_end))
    return ShiftWindow(day, start, end)


def _recent_windows(settings: TeamSettings, now: datetime) -> list[ShiftWindow]:
    """The shifts beginning on the local days around ``now``, latest first."""
    today = now.astimezone(settings.zone).date()
    return [shift_window(settings, today - timedelta(days=k)) for k in range(-1, 4)]


def last_complete_shift(settings: TeamSettings, now: datetime) -> ShiftWindow:
    """The latest shift that has ended by ``now`` (an end equal to ``now`` counts).

    A shift a DST change squeezes to nothing (both ends inside the skipped hour) is
    not a shift and is passed over. ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    for window in _recent_windows(settings, now):
        if window.end <= now and window.end > window.start:
            return window
    raise AssertionError("a daily shift always ends within three days")  # pragma: no cover


def current_shift(settings: TeamSettings, now: datetime) -> ShiftWindow | None:
    """The shift under way at ``now``, or None between shifts."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    for window in _recent_windows(settings, now):
        if now in window:
            return window
    return None
