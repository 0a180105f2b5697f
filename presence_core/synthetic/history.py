"""Write realistic synthetic presence history straight to the database.

Teams in several time zones, agents and admins working shifts (a few at night),
lunch and short breaks as `away`, calls as `busy`, weekends off (some work
Saturdays), multi-day absences and the occasional flapping connection. The same
seed gives the same history. Rows go in with COPY through the storage layer and
``presence_users`` ends as of the history's end (status, status_since, last_seen).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from presence_core.analytics import queries as analytics
from presence_core.database import storage
from presence_core.errors import PresenceError

SOURCE = "history"
CHUNK_USERS = 200

# (team, time zone): support follows the sun, the rest sit in one office each
TEAMS: tuple[tuple[str, str], ...] = (
    ("support-amer", "America/New_York"),
    ("support-west", "America/Los_Angeles"),
    ("support-emea", "Europe/London"),
    ("support-dach", "Europe/Berlin"),
    ("support-apac", "Asia/Tokyo"),
    ("support-india", "Asia/Kolkata"),
    ("support-anz", "Australia/Sydney"),
    ("sales", "America/Chicago"),
    ("billing", "Europe/Paris"),
    ("engineering", "Europe/Berlin"),
)

FIRST_NAMES = (
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Femi",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Milo",
    "Nia",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Vik",
    "Wren",
    "Xena",
    "Yusuf",
    "Zoe",
)
LAST_NAMES = (
    "Abe",
    "Berg",
    "Costa",
    "Diaz",
    "Evans",
    "Fox",
    "Gupta",
    "Haas",
    "Ito",
    "Jones",
    "Khan",
    "Lopez",
    "Mori",
    "Nagy",
    "Okafor",
    "Park",
    "Quist",
    "Rossi",
    "Sato",
    "Tan",
    "Ueda",
    "Vega",
    "Wong",
    "Xu",
    "Yilmaz",
    "Zhou",
)

Progress = Callable[[int, int, int], None]
"""progress(users_done, users_total, transitions_written)"""


@dataclass(frozen=True)
class Profile:
    """One synthetic person: who, where, and how they work."""

    user_id: str
    user_name: str
    user_type: str
    team: str
    tz: str
    shift_start: int  # local seconds after midnight
    shift_length: int  # seconds
    night: bool
    saturdays: bool
    absences: tuple[tuple[int, int], ...]  # (first day index, days)


def user_id_for(index: int) -> str:
    """The generated user ids: ``u00001``…"""
    return f"u{index:05d}"


def make_profile(seed: int, index: int, days: int) -> Profile:
    rng = random.Random(f"{seed}:profile:{index}")
    team, tz = TEAMS[rng.randrange(len(TEAMS))]
    admin = rng.random() < 0.08
    night = not admin and team.startswith("support") and rng.random() < 0.04
    if night:
        shift_start = 22 * 3600 + rng.randrange(-3600, 3601, 900)
        shift_length = 8 * 3600
    else:
        shift_start = rng.choice((7, 8, 8, 9, 9, 9, 10)) * 3600 + rng.randrange(0, 3600, 900)
        shift_length = rng.choice((8, 8, 8, 9)) * 3600 + rng.randrange(0, 1800, 300)
    absences = []
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        absences.append((rng.randrange(max(1, days)), rng.randint(2, 8)))
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    return Profile(
        user_id=user_id_for(index),
        user_name=name,
        user_type="admin" if admin else "agent",
        team=team,
        tz=tz,
        shift_start=shift_start,
        shift_length=shift_length,
        night=night,
        saturdays=not admin and rng.random() < 0.15,
        absences=tuple(absences),
    )


class _Midnights:
    """Local midnight of each day, as UTC epoch seconds, per time zone (cached)."""

    def __init__(self, first_day: date, days: int) -> None:
        self.first_day = first_day
        self.days = days
        self._cache: dict[str, list[int]] = {}

    def of(self, tz: str) -> list[int]:
        found = self._cache.get(tz)
        if found is None:
            zone = ZoneInfo(tz)
            found = [
                int(
                    datetime.combine(self.first_day + timedelta(days=k), datetime.min.time(), zone)
                    .astimezone(UTC)
                    .timestamp()
                )
                for k in range(self.days + 2)
            ]
            self._cache[tz] = found
        return found


def user_events(
    profile: Profile, seed: int, index: int, first_day: date, days: int, midnights: list[int]
) -> list[tuple[int, str, str | None]]:
    """One user's transitions, (epoch seconds, status, reason), strictly increasing in time."""
    rng = random.Random(f"{seed}:days:{index}")
    off_days = set()
    for first, length in profile.absences:
        off_days.update(range(first, first + length))
    events: list[tuple[int, str, str | None]] = []
    last = -1

    def emit(t: int, status: str, reason: str | None = None) -> None:
        nonlocal last
        if t <= last:
            t = last + 1
        if events and events[-1][1] == status:
            return
        events.append((t, status, reason))
        last = t

    agent = profile.user_type == "agent"
    for k in range(days):
        weekday = (first_day + timedelta(days=k)).weekday()
        if k in off_days or weekday == 6 or (weekday == 5 and not profile.saturdays):
            continue
        if rng.random() < 0.03:  # the odd day off
            continue
        length = profile.shift_length if weekday < 5 else profile.shift_length // 2
        begin = midnights[k] + profile.shift_start + int(rng.gauss(0, 600))
        end = begin + length + int(rng.gauss(0, 900))
        emit(begin, "online")
        t = begin
        lunch_at = begin + length // 2 + rng.randrange(-1800, 1801)
        lunch_done = length < 6 * 3600
        while True:
            # work stretch, with calls (busy) for agents and meetings for admins
            t += rng.randrange(480, 2100) if agent else rng.randrange(1800, 5400)
            if t >= end:
                break
            if not lunch_done and t >= lunch_at:
                emit(t, "away")
                t += rng.randrange(1800, 3600)
                lunch_done = True
            else:
                roll = rng.random()
                if roll < (0.7 if agent else 0.35):
                    emit(t, "busy")
                    t += rng.randrange(120, 1500)
                elif roll < 0.9:
                    emit(t, "away")
                    t += rng.randrange(180, 900)
                else:
                    continue
            if t >= end:
                break
            emit(t, "online")
            if rng.random() < 0.015:  # a flaky connection: quick drops and returns
                for _ in range(rng.randint(3, 6)):
                    t += rng.randint(5, 60)
                    emit(t, "offline", "disconnect")
                    t += rng.randint(2, 30)
                    emit(t, "online")
        emit(max(end, last + 1), "offline", "userOffline")
    return events


def generate_history(
    engine: Engine,
    users: int,
    days: int,
    seed: int = 1,
    end: datetime | None = None,
    progress: Progress | None = None,
    rollups: bool = True,
) -> int:
    """Write ``days`` days of history for ``users`` synthetic users, ending at ``end``
    (default now; nothing is written after it); returns the transitions written.

    Users are ``u00001``… with names, types and teams. On a database that holds
    none of their transitions yet the rows are copied straight in; otherwise they
    go through :func:`presence_core.database.storage.write_batch`, which skips what exists.
    With ``rollups`` the concurrency rollup is brought up to date at the end, so
    the dashboard's first long-range chart is fast.
    """
    if users < 1 or days < 1:
        raise PresenceError("generate-history needs at least one user and one day")
    end = (end or datetime.now(UTC)).astimezone(UTC)
    end_epoch = int(end.timestamp())
    first_day = (end - timedelta(days=days)).date()
    span = (end.date() - first_day).days + 1
    cache = _Midnights(first_day, span)
    start_epoch = int((end - timedelta(days=days)).timestamp())
    ids = [user_id_for(i) for i in range(1, users + 1)]
    with engine.connect() as conn:
        fresh = not conn.execute(
            text("select exists(select 1 from presence_transitions where user_id = any(:ids))"),
            {"ids": ids},
        ).scalar()
    written = 0
    for chunk_start in range(1, users + 1, CHUNK_USERS):
        chunk = range(chunk_start, min(users, chunk_start + CHUNK_USERS - 1) + 1)
        profiles = [make_profile(seed, i, span) for i in chunk]
        final: list[tuple] = []
        rows: list[tuple] = []
        for i, profile in zip(chunk, profiles, strict=True):
            events = user_events(profile, seed, i, first_day, span, cache.of(profile.tz))
            kept = [e for e in events if start_epoch <= e[0] <= end_epoch]
            for t, status, reason in kept:
                moment = datetime.fromtimestamp(t, UTC)
                rows.append((profile.user_id, status, moment, moment, False, reason, SOURCE))
            if kept:
                t, status, _ = kept[-1]
                since = datetime.fromtimestamp(t, UTC)
                seen = end if status != storage.OFFLINE else since
                final.append(
                    (
                        profile.user_id,
                        status,
                        since,
                        seen,
                        profile.user_type,
                        profile.user_name,
                        profile.team,
                    )
                )
            else:
                final.append(
                    (
                        profile.user_id,
                        storage.OFFLINE,
                        None,
                        end,
                        profile.user_type,
                        profile.user_name,
                        profile.team,
                    )
                )
        with engine.begin() as conn:
            if fresh:
                storage.copy_rows(
                    conn,
                    "presence_transitions",
                    storage.TRANSITION_COLUMNS,
                    rows,
                    storage.TRANSITION_TYPES,
                )
            else:
                storage.write_batch(conn, [storage.Transition(*r) for r in rows])
            storage.upsert_users(conn, final)
        written += len(rows)
        if progress is not None:
            progress(chunk[-1], users, written)
    if rollups:
        analytics.refresh_rollups(engine, end)
    return written


# ---------------------------------------------------------------------------
# command line
