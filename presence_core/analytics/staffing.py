"""Staffing per team: which shift each team is on (in its own zone), who of its agents
is available, away or offline and since when, and availability over its last
complete shift, against the team's target.

The shift windows come from :mod:`presence_core.shifts` (one definition); a team with
no settings works the whole day in the display zone. Users who hide their last seen
are counted in the per-team figures (aggregates) but their ``since`` is blank and
they are left out of per-agent availability unless ``include_hidden``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from presence_core.analytics.availability import availability
from presence_core.analytics.common import DEFAULT_AVAILABLE, OFFLINE, load_pandas, read_frame
from presence_core.database.teams import team_settings
from presence_core.shifts import (
    ShiftWindow,
    TeamSettings,
    current_shift,
    last_complete_shift,
    whole_day,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AVAILABLE",
    "AWAY",
    "ROSTER_COLUMNS",
    "STAFFING_COLUMNS",
    "TeamShift",
    "last_shift_availability",
    "plan_shifts",
    "roster",
    "staffing",
    "state_of",
    "team_shifts",
]

AVAILABLE = "available"
AWAY = "away"

ROSTER_COLUMNS = ("user_id", "user_name", "user_type", "team", "status", "since", "state")
STAFFING_COLUMNS = (
    "team",
    "time_zone",
    "shift_start",
    "shift_end",
    "on_shift",
    "shift_from",
    "shift_to",
    "scheduled",
    "available",
    "away",
    "offline",
    "available_pct",
    "target_pct",
    "below_target",
)


def state_of(status: str | None, available: Sequence[str] = DEFAULT_AVAILABLE) -> str:
    """``available`` (in an available status), ``offline`` (or never seen), else ``away``
    (present in a status that does not count as available: away, busy, …)."""
    if status is None or status == OFFLINE:
        return OFFLINE
    return AVAILABLE if status in available else AWAY


@dataclass(frozen=True)
class TeamShift:
    """A team's settings (``configured`` False: the whole day in the display zone), its
    last complete shift and the one under way (None between shifts) at ``now``."""

    settings: TeamSettings
    configured: bool
    last: ShiftWindow
    current: ShiftWindow | None


def plan_shifts(
    teams: Iterable[str],
    configured: dict[str, TeamSettings],
    display_tz: str,
    now: datetime,
) -> list[TeamShift]:
    """For each of ``teams`` (sorted): its settings, last complete shift and current
    shift at ``now`` (aware). Pure; :func:`team_shifts` reads the settings."""
    plans = []
    for team in sorted(set(teams)):
        settings = configured.get(team)
        known = settings is not None
        if settings is None:
            settings = whole_day(team, display_tz)
        plans.append(
            TeamShift(
                settings, known, last_complete_shift(settings, now), current_shift(settings, now)
            )
        )
    return plans


def team_shifts(
    engine: Engine, display_tz: str, now: datetime, teams: Iterable[str] | None = None
) -> list[TeamShift]:
    """:func:`plan_shifts` for ``teams`` (default: every team some user belongs to),
    with the settings stored by ``presence teams import``."""
    if teams is None:
        frame = read_frame(
            engine, "select distinct team from presence_users where team is not null", {}
        )
        teams = [str(t) for t in frame["team"]]
    return plan_shifts(teams, team_settings(engine, display_tz), display_tz, now)


# The status at :at is the user's last transition at or before it. At now (the page's
# usual question) that is the tail kept on write, with no read of the log; before the
# tail (an ?as_of= in the past), a backward probe in the week before :at, and only then
# further back: an unbounded probe opens every monthly partition's index, which for
# 5,000 people took 2.5 s. A user without a tail has no transitions. (LIMIT 1 over a
# UNION ALL runs its branches in order and stops at the first row.)
_ROSTER_SQL = """
select u.user_id, u.user_name, u.user_type, u.team,
       coalesce(l.status, 'offline') as status,
       case when cast(:include_hidden as boolean) or not u.hide_last_seen
            then l.occurred_at end as since
from presence_users u
left join presence_status_tails tl on tl.user_id = u.user_id
left join lateral (
    select tl.status, tl.since as occurred_at where tl.since <= cast(:at as timestamptz)
    union all
    select * from (
        select t.status, t.occurred_at from presence_transitions t
        where t.user_id = u.user_id and t.occurred_at <= cast(:at as timestamptz)
          and t.occurred_at > cast(:at as timestamptz) - interval '7 days'
        order by t.occurred_at desc, t.id desc
        limit 1
    ) week where tl.since > cast(:at as timestamptz)
    union all
    select * from (
        select t.status, t.occurred_at from presence_transitions t
        where t.user_id = u.user_id
          and t.occurred_at <= cast(:at as timestamptz) - interval '7 days'
        order by t.occurred_at desc, t.id desc
        limit 1
    ) older where tl.since > cast(:at as timestamptz)
    limit 1
) l on true
where u.team is not null
  and (cast(:teams as text[]) is null or u.team = any(cast(:teams as text[])))
  and (cast(:user_type as text) is null or u.user_type = cast(:user_type as text))
order by u.team, u.user_id"""


def roster(
    engine: Engine,
    at: datetime | None = None,
    teams: Iterable[str] | None = None,
    user_type: str | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Every agent of ``teams`` (default: every user with a team) and their state at
    ``at`` (default now), from their transitions: ``user_id, user_name, user_type,
    team, status, since, state`` where ``since`` is when that status began (blank for
    users who hide their last seen unless ``include_hidden``: they are listed and
    counted, their times are not shown) and ``state`` is :func:`state_of`."""
    at = datetime.now(UTC) if at is None else at
    params = {
        "at": at,
        "teams": None if teams is None else [str(t) for t in teams],
        "user_type": user_type,
        "include_hidden": include_hidden,
    }
    frame = read_frame(engine, _ROSTER_SQL, params, utc=("since",))
    available = tuple(available_statuses)
    frame["state"] = [state_of(s, available) for s in frame["status"]]
    return frame[list(ROSTER_COLUMNS)]


def staffing(
    shifts: Sequence[TeamShift], roster_frame: pd.DataFrame, default_target: float | None = None
) -> pd.DataFrame:
    """Per team (one row per entry of ``shifts``): its zone and shift, whether a shift
    is under way and its bounds (UTC; the last complete one when none is), the agents
    scheduled (the team's rows in ``roster_frame``), how many are available, away and
    offline, ``available_pct`` (available ÷ scheduled × 100; None with nobody
    scheduled), the target (the team's, else ``default_target``) and ``below_target``
    (only while on shift: off shift nobody is missing). Pure."""
    pd_ = load_pandas()
    counts = (
        roster_frame.groupby(["team", "state"]).size().unstack(fill_value=0)
        if not roster_frame.empty
        else pd_.DataFrame()
    )
    rows = []
    for plan in shifts:
        s = plan.settings
        window = plan.current or plan.last
        by_state = counts.loc[s.team] if s.team in counts.index else {}
        available = int(by_state.get(AVAILABLE, 0))
        away = int(by_state.get(AWAY, 0))
        offline = int(by_state.get(OFFLINE, 0))
        scheduled = available + away + offline
        pct = 100.0 * available / scheduled if scheduled else None
        target = s.target_pct if s.target_pct is not None else default_target
        rows.append(
            {
                "team": s.team,
                "time_zone": s.time_zone,
                "shift_start": s.shift_start,
                "shift_end": s.shift_end,
                "on_shift": plan.current is not None,
                "shift_from": window.start,
                "shift_to": window.end,
                "scheduled": scheduled,
                "available": available,
                "away": away,
                "offline": offline,
                "available_pct": pct,
                "target_pct": target,
                "below_target": bool(
                    plan.current is not None
                    and target is not None
                    and pct is not None
                    and pct < target
                ),
            }
        )
    return pd_.DataFrame(rows, columns=list(STAFFING_COLUMNS))


def last_shift_availability(
    engine: Engine,
    shifts: Sequence[TeamShift],
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    user_type: str | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Availability of every agent over their own team's last complete shift (each in
    its team's zone): :func:`presence_core.analytics.availability` columns
    (``date`` is the local day the shift began) plus ``shift_from, shift_to``; one
    read per team, run at once."""
    pd_ = load_pandas()

    def one(plan: TeamShift) -> pd.DataFrame:
        s, w = plan.settings, plan.last
        frame = availability(
            engine,
            w.day,
            w.day,
            s.time_zone,
            s.shift_start,
            s.shift_end,
            available_statuses,
            team=s.team,
            user_type=user_type,
            include_hidden=include_hidden,
        )
        frame["shift_from"] = w.start
        frame["shift_to"] = w.end
        return frame

    if not shifts:
        return pd_.DataFrame(
            columns=[
                "date",
                "user_id",
                "user_name",
                "team",
                "available_seconds",
                "shift_seconds",
                "availability_pct",
                "shift_from",
                "shift_to",
            ]
        )
    with ThreadPoolExecutor(max_workers=min(4, len(shifts)), thread_name_prefix="shifts") as pool:
        frames = list(pool.map(one, shifts))
    return pd_.concat(frames, ignore_index=True)
