"""Teams' shifts in their own time zones, and which window is "the last complete shift".

A team works one shift a day on its working days (``work_days``: the local weekdays
a shift begins on; every day when unset), from ``shift_start`` to ``shift_end`` on the
wall clock of its zone. An end before the start means the shift crosses midnight (22:00–06:00
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
    "WEEKDAYS",
    "ShiftWindow",
    "TeamSettings",
    "current_shift",
    "first_instant_at",
    "format_work_days",
    "last_complete_shift",
    "parse_work_days",
    "shift_window",
    "whole_day",
    "zone_named",
]

WHOLE_DAY = (time(0, 0), time(0, 0))
"""(shift_start, shift_end) of a team with no shift: midnight to midnight."""

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""Day names as ``work_days`` are written, in ``date.weekday()`` order."""


def parse_work_days(text: str | None) -> frozenset[int] | None:
    """``Mon-Fri``, ``Mon,Wed,Fri``, ``Sun-Thu`` (a range may wrap past Sunday) or a mix,
    as ``date.weekday()`` numbers; blank or ``daily`` is every day (None). ValueError,
    with a message fit for a user, for anything else."""
    if text is None or text.strip().lower() in ("", "daily"):
        return None
    names = {name.lower(): number for number, name in enumerate(WEEKDAYS)}
    days: set[int] = set()
    for part in text.split(","):
        ends = [end.strip().lower()[:3] for end in part.split("-")]
        if len(ends) > 2 or not all(end in names for end in ends):
            raise ValueError(
                f"{text!r} is not a list of working days (such as Mon-Fri or Mon,Wed,Fri)"
            )
        first, last = names[ends[0]], names[ends[-1]]
        days.update((first + k) % 7 for k in range((last - first) % 7 + 1))
    return None if len(days) == 7 else frozenset(days)


def format_work_days(days: frozenset[int] | None) -> str | None:
    """The stored form of ``work_days``: names in week order (``Mon,Tue,Wed,Thu,Fri``),
    None for every day. :func:`parse_work_days` reads it back."""
    if days is None:
        return None
    return ",".join(WEEKDAYS[day] for day in sorted(days))


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
    """A team's zone, daily shift, target availability (a percentage, or None) and
    working days (``date.weekday()`` numbers of the local days a shift begins on;
    None: every day)."""

    team: str
    time_zone: str
    shift_start: time
    shift_end: time
    target_pct: float | None = None
    work_days: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.work_days is not None and not self.work_days:
            raise ValueError(f"team {self.team!r} has no working day")

    def works_on(self, day: date) -> bool:
        """Whether a shift begins on local ``day``."""
        return self.work_days is None or day.weekday() in self.work_days

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
    """The shifts beginning on the working days around ``now``, latest first: enough
    of them to hold a complete one even with a single working day a week."""
    today = now.astimezone(settings.zone).date()
    days = [today - timedelta(days=k) for k in range(-1, 11)]
    return [shift_window(settings, day) for day in days if settings.works_on(day)]


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
    raise AssertionError("a weekly shift always ends within ten days")  # pragma: no cover


def current_shift(settings: TeamSettings, now: datetime) -> ShiftWindow | None:
    """The shift under way at ``now``, or None between shifts."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    for window in _recent_windows(settings, now):
        if now in window:
            return window
    return None
