"""Teams: `presence teams import FILE.csv` sets each team's time zone, shift and target.

The CSV has a header line naming its columns: `team`, `time_zone`, `shift_start` and
`shift_end` required, `target_pct` and `work_days` optional, in any order. Times are 24-hour
`HH:MM` (or `HH:MM:SS`); a `shift_end` at or before `shift_start` crosses midnight
(22:00,06:00), and 00:00,24:00 is the whole day. `target_pct` is a percentage
above 0 and at most 100; an empty cell means no target, and a file without the
column leaves every team's target as it was. `work_days` names the local days a
shift begins on (`Mon-Fri`, `Sun-Thu`, `Mon,Wed,Fri`; empty or `daily`: every day);
likewise, a file without the column leaves them as they were. Teams not yet known are created;
teams not in the file are left alone. A malformed file is refused with the line
number, and nothing is changed: the whole file is one transaction.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import time
from decimal import Decimal

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from presence_core.database import tables
from presence_core.errors import PresenceError
from presence_core.protocol import MAX_TEXT, unstorable
from presence_core.shifts import (
    WHOLE_DAY,
    TeamSettings,
    format_work_days,
    parse_work_days,
    whole_day,
    zone_named,
)

__all__ = [
    "CsvRecords",
    "TeamsFile",
    "import_teams",
    "parse_teams_csv",
    "settings_for",
    "team_settings",
    "teams_without_users",
    "write_teams",
]

REQUIRED = ("team", "time_zone", "shift_start", "shift_end")
OPTIONAL = ("target_pct", "work_days")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


@dataclass(frozen=True)
class TeamsFile:
    """A parsed import file: its teams, and whether it has a ``target_pct`` and a
    ``work_days`` column (without one, those are left as they are)."""

    teams: tuple[TeamSettings, ...]
    sets_targets: bool
    sets_work_days: bool = False


def _storable_lines(lines: Iterable[str], name: str) -> Iterator[str]:
    """The file's lines, refusing what PostgreSQL cannot store (a NUL, a lone
    surrogate) with the physical line number, before the CSV reader sees it."""
    for number, line in enumerate(lines, start=1):
        bad = unstorable(line)
        if bad is not None:
            raise PresenceError(f"{name}, line {number}: holds {bad}")
        yield line


def _parse_time(value: str, column: str, *, end: bool) -> time:
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{column} {value!r} is not a time of day (HH:MM, 24-hour)")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if end and (hour, minute, second) == (24, 0, 0):
        return time(0, 0)  # 24:00: midnight at the end of the day
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{column} {value!r} is not a time of day (HH:MM, 24-hour)")
    return time(hour, minute, second)


def _parse_target(value: str) -> float | None:
    if not value:
        return None
    text = value.removesuffix("%").strip()
    try:
        target = float(text)
    except ValueError:
        target = math.nan
    if not (math.isfinite(target) and 0 < target <= 100):
        raise ValueError(f"target_pct {value!r} is not a percentage above 0 and at most 100")
    return target


def _parse_team(value: str) -> str:
    if not value:
        raise ValueError("team is empty")
    if len(value) > MAX_TEXT:
        raise ValueError(f"team is {len(value)} characters; at most {MAX_TEXT}")
    return value


def _parse_row(record: dict[str, str]) -> TeamSettings:
    team = _parse_team(record["team"])
    zone = record["time_zone"]
    zone_named(zone)
    start = _parse_time(record["shift_start"], "shift_start", end=False)
    end = _parse_time(record["shift_end"], "shift_end", end=True)
    target = _parse_target(record.get("target_pct", ""))
    return TeamSettings(team, zone, start, end, target, parse_work_days(record.get("work_days")))


class CsvRecords:
    """An import file read record by record: the header checked against the
    ``required`` and ``optional`` columns (any order, case and spaces ignored), blank
    lines skipped, cells stripped; every problem is a PresenceError naming the line.

    Iterating gives ``(line number, {column: cell})``. Nothing here is about teams:
    ``users import`` could read its file the same way.
    """

    def __init__(
        self, lines: Iterable[str], name: str, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> None:
        self.name = name
        expected = ",".join(required) + "".join(f"[,{c}]" for c in optional)
        self._reader = csv.reader(_storable_lines(lines, name), strict=True)
        try:
            header = next(self._reader)
        except StopIteration:
            raise PresenceError(f"{name}: empty file; expected a header {expected}") from None
        except csv.Error as exc:
            raise self.error(1, str(exc)) from None
        self.columns = [c.strip().lower() for c in header]
        unknown = [c for c in self.columns if c not in required + optional]
        if unknown:
            raise self.error(1, f"unknown column {unknown[0]!r}; expected {expected}")
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise self.error(1, f"missing column {missing[0]!r}")
        if len(set(self.columns)) != len(self.columns):
            raise self.error(1, "a column is named twice")

    def error(self, line: int, message: str) -> PresenceError:
        return PresenceError(f"{self.name}, line {line}: {message}")

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        width = len(self.columns)
        try:
            for fields in self._reader:
                line = self._reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != width:
                    raise self.error(line, f"{len(fields)} fields, expected {width}")
                yield line, {c: f.strip() for c, f in zip(self.columns, fields, strict=True)}
        except csv.Error as exc:
            raise self.error(self._reader.line_num, str(exc)) from None


def parse_teams_csv(lines: Iterable[str], name: str = "input") -> TeamsFile:
    """Parse and validate the whole file; raise PresenceError naming the first bad line."""
    records = CsvRecords(lines, name, REQUIRED, OPTIONAL)
    teams: list[TeamSettings] = []
    seen: dict[str, int] = {}
    for line, record in records:
        try:
            settings = _parse_row(record)
        except ValueError as exc:
            raise records.error(line, str(exc)) from None
        if settings.team in seen:
            raise records.error(
                line, f"team {settings.team!r} already given on line {seen[settings.team]}"
            )
        seen[settings.team] = line
        teams.append(settings)
    return TeamsFile(
        tuple(teams),
        sets_targets="target_pct" in records.columns,
        sets_work_days="work_days" in records.columns,
    )


def _values(settings: TeamSettings) -> dict:
    return {
        "team": settings.team,
        "time_zone": settings.time_zone,
        "shift_start": settings.shift_start,
        "shift_end": settings.shift_end,
        "target_pct": None if settings.target_pct is None else Decimal(str(settings.target_pct)),
        "work_days": format_work_days(settings.work_days),
    }


def write_teams(
    conn: Connection,
    teams: Iterable[TeamSettings],
    *,
    replace: bool = True,
    targets: bool = True,
    work_days: bool = True,
) -> int:
    """Upsert ``teams`` on the caller's transaction; returns how many rows were written.

    ``replace=False`` keeps the settings of teams already known (what the synthetic
    organisation does, so it never overwrites a real import); ``targets=False`` and
    ``work_days=False`` keep known teams' targets and working days.
    """
    rows = [_values(t) for t in teams]
    if not rows:
        return 0
    stmt = pg_insert(tables.teams).values(rows)
    if replace:
        kept = {"team"}
        kept |= set() if targets else {"target_pct"}
        kept |= set() if work_days else {"work_days"}
        stmt = stmt.on_conflict_do_update(
            index_elements=[tables.teams.c.team],
            set_={c: stmt.excluded[c] for c in rows[0] if c not in kept},
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[tables.teams.c.team])
    return conn.execute(stmt).rowcount


def import_teams(engine: Engine, parsed: TeamsFile) -> tuple[int, int]:
    """Apply an import file in one transaction; returns (teams updated, teams created)."""
    names = [t.team for t in parsed.teams]
    with engine.begin() as conn:
        before = len(
            conn.execute(select(tables.teams.c.team).where(tables.teams.c.team.in_(names))).all()
        )
        write_teams(
            conn, parsed.teams, targets=parsed.sets_targets, work_days=parsed.sets_work_days
        )
    return before, len(names) - before


def teams_without_users(engine: Engine, teams: Iterable[str]) -> list[str]:
    """Those of ``teams`` that no user belongs to (a typo in an import, usually)."""
    names = sorted(set(teams))
    if not names:
        return []
    users = tables.users
    with engine.connect() as conn:
        used = set(
            conn.execute(select(users.c.team).distinct().where(users.c.team.in_(names))).scalars()
        )
    return [n for n in names if n not in used]


def _from_row(row, display_tz: str) -> TeamSettings:
    start = row.shift_start if row.shift_start is not None else WHOLE_DAY[0]
    end = row.shift_end if row.shift_end is not None else start
    target = None if row.target_pct is None else float(row.target_pct)
    days = parse_work_days(row.work_days)
    return TeamSettings(row.team, row.time_zone or display_tz, start, end, target, days)


def team_settings(engine: Engine, display_tz: str = "UTC") -> dict[str, TeamSettings]:
    """Every configured team's settings, by name (a row missing its zone takes
    ``display_tz``; one missing its times, the whole day)."""
    with engine.connect() as conn:
        rows = conn.execute(select(tables.teams).order_by(tables.teams.c.team)).all()
    return {row.team: _from_row(row, display_tz) for row in rows}


def settings_for(engine: Engine, team: str, display_tz: str = "UTC") -> TeamSettings:
    """The settings of ``team``; a team nobody has configured works the whole day in
    ``display_tz`` (what the Availability page uses before anything is imported)."""
    with engine.connect() as conn:
        row = conn.execute(select(tables.teams).where(tables.teams.c.team == team)).first()
    return whole_day(team, display_tz) if row is None else _from_row(row, display_tz)
