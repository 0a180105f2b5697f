"""The daily summary (export ``daily``): one row per user per local day."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from presence_core.analytics import summaries, user_days
from presence_core.analytics.common import (
    DEFAULT_AVAILABLE,
    bind,
    empty_frame,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.sql import DAILY_PER_DAY, DAILY_SELECT, SESSIONS, seg_days

if TYPE_CHECKING:
    import pandas as pd


DAILY_COLUMNS = (
    "date",
    "user_id",
    "user_type",
    "user_name",
    "team",
    "first_online",
    "last_offline",
    "sessions",
    "online_seconds",
    "availability_pct",
)


def daily_summary_sql(rollup: bool = True) -> str:
    """The daily summary query (DESIGN's export ``daily`` columns, in order), for
    :func:`daily_params` (or :func:`~presence_core.analytics.common.period_params`
    plus ``avail``).

    With ``rollup`` (the default; the export uses it too) sessions and availability
    come from the summaries kept on write; when the available statuses include
    ``offline`` (not summarised) the same statement answers from the transitions.
    ``rollup=False`` always reads the transitions. Both give the same rows."""
    if not rollup:
        return daily_summary_raw_sql()
    gate = "'offline' = any(cast(:avail as text[]))"
    return (
        f"select * from ({daily_summary_raw_sql()}) raw where {gate}\n"
        f"union all\nselect * from ({summaries.daily_summary_sql()}) rolled where not {gate}\n"
        "order by date, user_id"
    )


def daily_summary_raw_sql() -> str:
    """The daily summary from the transitions (the reference definition)."""
    return (
        "with"
        + SESSIONS
        + ","
        + DAILY_PER_DAY
        + """
    aday as ("""
        + seg_days("seg", "x.seg_start", "x.seg_end")
        + """
        where x.status = any(cast(:avail as text[]))
    ),
    avail as (
        select user_id, day, sum(extract(epoch from part_end - part_start)) as secs
        from aday where part_end > part_start group by user_id, day
    )"""
        + DAILY_SELECT
    )


def daily_summary(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    include_hidden: bool = False,
    rollup: bool = True,
) -> pd.DataFrame:
    """One row per user per local day with a session overlapping it, DESIGN's
    columns: ``date, user_id, user_type, user_name, team, first_online,
    last_offline, sessions, online_seconds, availability_pct``.

    ``sessions`` counts sessions overlapping the day; ``online_seconds`` and
    ``availability_pct`` (whole day as the shift) count only that day's part;
    ``first_online`` is the start of the first session beginning that day,
    ``last_offline`` the end of the last session ending that day (NaT where none).
    Days at the period's edges count only their part inside the period, but the
    percentage is of the whole local day.
    """
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(DAILY_COLUMNS)
    params = daily_params(
        lo, hi, zone, user_ids, user_type, team, available_statuses, include_hidden
    )
    utc = ("first_online", "last_offline")
    if not rollup:
        return read_frame(engine, daily_summary_raw_sql(), params, utc=utc)
    built = daily_summary_query(engine, params, sentinel=True)
    return user_days.read_cached(engine, built, daily_summary_sql(), params, utc=utc)


def daily_summary_query(
    engine: Engine, params: dict[str, Any], sentinel: bool = False
) -> tuple[str, dict[str, Any]]:
    """The daily summary's statement and parameters for ``params`` (as
    :func:`daily_params` gives them, or ``period_params`` plus ``avail``): whole past
    local days from the per-user cache (:mod:`~presence_core.analytics.user_days`,
    filled first), the others computed by :func:`daily_summary_sql`. The export runs
    this statement, so a year's ``daily`` rows are mostly cached rows. Offline among
    the available statuses (not summarised) reads the transitions.

    ``sentinel``: for :func:`~presence_core.analytics.user_days.read_cached` (see
    ``cached_query``); the export's statement computes the whole period itself if
    its cached days went stale."""
    lo, hi = params["start"], params["end"]
    if hi <= lo or not summaries.serves(params["avail"]):
        return daily_summary_sql(), params
    avail = sorted(set(params["avail"]))
    return user_days.cached_query(
        engine,
        daily_summary_sql(),
        user_days.daily_cached_sql(avail),
        "date, user_id",
        {**params, **user_days.avail_params(avail)},
        lo,
        hi,
        ZoneInfo(params["tz"]),
        sentinel="null::date" + ", null" * (len(DAILY_COLUMNS) - 1) if sentinel else None,
    )


def daily_params(
    lo: datetime,
    hi: datetime,
    zone: ZoneInfo,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    include_hidden: bool = False,
) -> dict[str, Any]:
    """Bound parameters for :func:`daily_summary_sql`."""
    return bind(
        lo,
        hi,
        zone,
        user_ids,
        user_type,
        team,
        include_hidden=include_hidden,
        avail=list(available_statuses),
    )
