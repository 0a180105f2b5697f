"""One synthetic organisation: its teams, its people, and every working day they have.

Both synthetic generators read it: ``generate-history`` writes the past of these
people to the database, ``simulate`` connects the same people to a presence server
and lets them live on from the moment it starts. Same user ids, names, teams and
zones, and the same day: someone at lunch in the history's last minutes is still at
lunch when the crowd logs them in.

Teams follow the sun: support in London, Berlin, New York, Los Angeles, Tokyo,
Kolkata and Sydney, a night desk in Berlin whose shift crosses midnight, and
sales, billing and engineering in one office each. Each team has a time zone, a
daily shift and (for most) a target availability: what ``presence_teams`` holds.
People keep their own habits around their team's shift (a little earlier or later,
a little longer or shorter), take lunch and short breaks (``away``), calls
(``busy``), work Monday to Friday (a few on Saturday mornings), are away for a few
days now and then, and some have a flaky connection.

Deterministic: a person depends only on (seed, index), a working day only on
(seed, index, date), never on how many people or days are asked for; so the crowd's
first N people are the history's first N, whatever its size.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from presence_core import protocol
from presence_core.shifts import ShiftWindow, TeamSettings, shift_window

__all__ = [
    "TEAMS",
    "USER_ID_BASE",
    "Organisation",
    "Person",
    "Team",
    "WorkDay",
    "organisation",
]

USER_ID_BASE = 1000
"""Person ``i`` has user id ``1000 + i``: a number, as in the guide (stored as text)."""

AWAY, BUSY = "away", "busy"


@dataclass(frozen=True)
class Team:
    """A team: where it works, its daily shift, its target availability (percent or
    None), and ``weight``, its share of the organisation's people."""

    name: str
    time_zone: str
    shift_start: time
    shift_end: time
    target_pct: float | None
    weight: int

    @property
    def settings(self) -> TeamSettings:
        """What ``presence_teams`` holds for this team: every team works Monday to
        Friday (a few people's Saturday mornings are extra hours, not the team's shift)."""
        return TeamSettings(
            self.name,
            self.time_zone,
            self.shift_start,
            self.shift_end,
            self.target_pct,
            WEEKDAYS_MON_FRI,
        )

    @property
    def night(self) -> bool:
        return self.shift_end <= self.shift_start


WEEKDAYS_MON_FRI = frozenset(range(5))

# Targets are for each agent's availability % over the shift (online only, the
# default): the organisation's agents are on calls (busy) much of the day, so about
# 58 % is typical and a target near 60 % splits a team into those who reach it and not.
TEAMS: tuple[Team, ...] = (
    Team("Support EMEA", "Europe/London", time(8), time(16, 30), 60.0, 4),
    Team("Support DACH", "Europe/Berlin", time(8), time(16, 30), 60.0, 3),
    Team("Support Americas", "America/New_York", time(9), time(17, 30), 60.0, 4),
    Team("Support West", "America/Los_Angeles", time(8), time(16, 30), 55.0, 2),
    Team("Support APAC", "Asia/Tokyo", time(9), time(17, 30), 60.0, 3),
    Team("Support India", "Asia/Kolkata", time(9, 30), time(18), 60.0, 2),
    Team("Support ANZ", "Australia/Sydney", time(8, 30), time(17), 55.0, 1),
    Team("Night Desk", "Europe/Berlin", time(22), time(6), 55.0, 1),
    Team("Sales", "America/Chicago", time(8, 30), time(17), None, 2),
    Team("Billing", "Europe/Paris", time(9), time(17), 60.0, 2),
    Team("Engineering", "Europe/Berlin", time(10), time(18, 30), None, 2),
)

_FIRST_NAMES = (
    "Ada Ben Chloe Dev Elif Femi Gus Hana Ivan Jade Kofi Lena Milo Nia Omar Pia Quinn Rosa "
    "Sami Tara Uma Vik Wren Xena Yusuf Zoe"
)
_LAST_NAMES = (
    "Abe Berg Costa Diaz Evans Fox Gupta Haas Ito Jones Khan Lopez Mori Nagy Okafor Park "
    "Quist Rossi Sato Tan Ueda Vega Wong Xu Yilmaz Zhou"
)
_FIRST = tuple(_FIRST_NAMES.split())
_LAST = tuple(_LAST_NAMES.split())

_ABSENCE_EPOCH = date(2000, 1, 3)  # a Monday; absences are drawn per 28-day block from it
_BLOCK = 28


@dataclass(frozen=True)
class Person:
    """Someone in the organisation, and their habits around the team's shift."""

    index: int
    user_id: int
    user_name: str
    user_type: str  # "agent" or "admin"
    team: str
    time_zone: str
    start_offset: int  # seconds after the team's shift start they usually log in
    extra_seconds: int  # how much longer (or, negative, shorter) than the shift they work
    saturdays: bool
    flaky: bool

    @property
    def key(self) -> str:
        """The user id as stored (``presence_users.user_id``)."""
        return str(self.user_id)


@dataclass(frozen=True)
class WorkDay:
    """One person's shift on the local ``day`` it begins; times are UTC epoch seconds.

    ``changes`` are the status changes while logged in (``away``, ``busy``, back to
    ``online``), strictly after ``login`` and before ``logout``; ``drops`` are the
    moments the network was lost and came back. ``signs_out``: the day ends with
    ``userOffline``, otherwise the app is just closed.
    """

    person: int
    day: date
    login: int
    logout: int
    changes: tuple[tuple[int, str], ...]
    drops: tuple[tuple[int, int], ...]
    signs_out: bool

    def status_at(self, moment: float) -> str:
        """The status chosen at ``moment`` inside the shift (network drops aside)."""
        status = protocol.ONLINE
        for at, changed in self.changes:
            if at > moment:
                break
            status = changed
        return status


class Organisation:
    """The organisation of one seed: people by index, and their working days."""

    def __init__(self, seed: int, teams: tuple[Team, ...] = TEAMS) -> None:
        self.seed = seed
        self.teams = teams
        self._by_name = {t.name: t for t in teams}
        names = random.Random(f"{seed}:names")
        self._names = [(first, last) for first in _FIRST for last in _LAST]
        names.shuffle(self._names)
        self._windows: dict[tuple[str, date], ShiftWindow] = {}
        self._people: dict[int, Person] = {}
        self._absence_blocks: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}

    def team(self, name: str) -> Team:
        return self._by_name[name]

    def teams_of(self, people: list[Person]) -> list[Team]:
        """The teams these people are in, in the organisation's order."""
        used = {p.team for p in people}
        return [t for t in self.teams if t.name in used]

    def people(self, count: int) -> list[Person]:
        """The first ``count`` people; person ``i`` is at position ``i``."""
        return [self.person(i) for i in range(count)]

    def person(self, index: int) -> Person:
        """Person ``index`` (from 0), the same for the same seed."""
        found = self._people.get(index)
        if found is None:
            found = self._people[index] = self._make_person(index)
        return found

    def _make_person(self, index: int) -> Person:
        rng = random.Random(f"{self.seed}:person:{index}")
        # the first people cover every team, so a small crowd still sees them all
        if index < len(self.teams):
            team = self.teams[index]
        else:
            team = rng.choices(self.teams, weights=[t.weight for t in self.teams])[0]
        admin = rng.random() < 0.08
        return Person(
            index=index,
            user_id=USER_ID_BASE + index,
            user_name=self._name(index),
            user_type="admin" if admin else "agent",
            team=team.name,
            time_zone=team.time_zone,
            start_offset=rng.randrange(-1800, 1801, 900),
            extra_seconds=rng.randrange(-1800, 1801, 300),
            saturdays=not admin and not team.night and rng.random() < 0.15,
            flaky=rng.random() < 0.05,
        )

    def _name(self, index: int) -> str:
        """Unique names: first and last name, then with a middle initial, then a number."""
        block, k = divmod(index, len(self._names))
        first, last = self._names[k]
        if block == 0:
            return f"{first} {last}"
        if block <= 26:
            return f"{first} {chr(64 + block)}. {last}"
        return f"{first} {last} {block}"

    def _window(self, team: Team, day: date) -> ShiftWindow:
        key = (team.name, day)
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = shift_window(team.settings, day)
        return found

    def absent(self, person: Person, day: date) -> bool:
        """Whether ``person`` is away for several days (leave, illness) on ``day``."""
        ordinal = (day - _ABSENCE_EPOCH).days
        block = ordinal // _BLOCK
        return any(
            first <= ordinal < until
            for b in (block - 1, block)
            for first, until in self._absences(person.index, b)
        )

    def _absences(self, index: int, block: int) -> tuple[tuple[int, int], ...]:
        """The absences (first day ordinal, day after) that begin in ``block`` for
        person ``index``: drawn once from the block's own seed, then kept (seeding a
        generator costs more than the rest of a day's draws; a person's days ask for
        the same block 2 x 28 times). Bounded: the cache is emptied when it grows."""
        key = (index, block)
        found = self._absence_blocks.get(key)
        if found is None:
            if len(self._absence_blocks) > 4096:
                self._absence_blocks.clear()
            rng = random.Random(f"{self.seed}:absence:{index}:{block}")
            spans = []
            for _ in range(rng.choice((0, 0, 0, 0, 1, 1))):
                first = block * _BLOCK + rng.randrange(_BLOCK)
                spans.append((first, first + rng.randint(2, 8)))
            found = self._absence_blocks[key] = tuple(spans)
        return found

    def work_day(self, person: Person, day: date) -> WorkDay | None:
        """``person``'s shift beginning on local ``day``, or None (weekend, absence, a
        day off)."""
        weekday = day.weekday()
        if weekday == 6 or (weekday == 5 and not person.saturdays):
            return None
        if self.absent(person, day):
            return None
        rng = random.Random(f"{self.seed}:day:{person.index}:{day.isoformat()}")
        if rng.random() < 0.03:  # the odd day off
            return None
        window = self._window(self.team(person.team), day)
        length = int(window.seconds) + person.extra_seconds
        if weekday == 5:
            length //= 2
        login = int(window.start.timestamp()) + person.start_offset + int(rng.gauss(0, 600))
        logout = login + length + int(rng.gauss(0, 900))
        changes = _breaks(rng, login, logout, agent=person.user_type == "agent")
        drops = _drops(rng, login, logout, flaky=person.flaky)
        return WorkDay(
            person.index, day, login, logout, changes, drops, signs_out=rng.random() < 0.75
        )

    def work_days(self, person: Person, start: datetime, end: datetime) -> Iterator[WorkDay]:
        """``person``'s working days that overlap ``[start, end)``, in order."""
        lo, hi = start.timestamp(), end.timestamp()
        zone = self.team(person.team).settings.zone
        day = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date()
        while day <= last:
            shift = self.work_day(person, day)
            if shift is not None and shift.logout > lo and shift.login < hi:
                yield shift
            day += timedelta(days=1)


def _breaks(rng: random.Random, login: int, logout: int, *, agent: bool) -> tuple:
    """Lunch and short breaks (away), calls for agents and meetings for admins (busy)."""
    changes: list[tuple[int, str]] = []
    length = logout - login
    lunch_at = login + length // 2 + rng.randrange(-1800, 1801)
    lunch_done = length < 6 * 3600
    t = login
    while True:
        t += rng.randrange(480, 2100) if agent else rng.randrange(1800, 5400)
        if t >= logout:
            break
        if not lunch_done and t >= lunch_at:
            changes.append((t, AWAY))
            t += rng.randrange(1800, 3600)
            lunch_done = True
        else:
            roll = rng.random()
            if roll < (0.7 if agent else 0.35):
                changes.append((t, BUSY))
                t += rng.randrange(120, 1500)
            elif roll < 0.9:
                changes.append((t, AWAY))
                t += rng.randrange(180, 900)
            else:
                continue
        if t >= logout:
            break
        changes.append((t, protocol.ONLINE))
    return tuple(changes)


def _drops(rng: random.Random, login: int, logout: int, *, flaky: bool) -> tuple:
    """Lost connections, (lost, back): now and then one for anybody; for the flaky, on
    about half their days a burst of quick drops and returns."""
    wanted: list[tuple[int, int]] = []
    if logout - login < 600:
        return ()
    if rng.random() < 0.15:
        at = rng.randrange(login + 60, logout - 120)
        wanted.append((at, at + rng.randint(5, 90)))
    if flaky and rng.random() < 0.5:
        t = rng.randrange(login + 60, logout - 600)
        for _ in range(rng.randint(3, 6)):
            t += rng.randint(5, 60)
            back = t + rng.randint(2, 30)
            wanted.append((t, back))
            t = back
    drops: list[tuple[int, int]] = []
    for at, back in sorted(wanted):
        if back >= logout:
            continue
        if drops and at <= drops[-1][1]:
            continue  # overlaps the previous drop
        drops.append((at, back))
    return tuple(drops)


@functools.cache
def organisation(seed: int) -> Organisation:
    """The organisation of ``seed`` (one per seed and process)."""
    return Organisation(seed)
