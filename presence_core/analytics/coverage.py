"""Coverage: when no listener was watching (so "offline" there means "not observed")."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from presence_core.analytics.common import empty_frame, read_frame, resolve_period

if TYPE_CHECKING:
    import pandas as pd


def coverage_gaps(
    engine: Engine, start: datetime | date, end: datetime | date | None = None
) -> pd.DataFrame:
    """The parts of ``[start, end)`` when no listener was connected (so "offline"
    there means "not observed"): ``gap_start, gap_end, seconds``. A listener
    still running covers up to now."""
    lo, hi = resolve_period(start, end, ZoneInfo("UTC"))
    if hi <= lo:
        return empty_frame(("gap_start", "gap_end", "seconds"))
    sql = """
    with covered as (
        select coalesce(range_agg(tstzrange(started_at, coalesce(ended_at, now()))),
                        '{}'::tstzmultirange) as m
        from presence_coverage
        where started_at < cast(:end as timestamptz)
          and coalesce(ended_at, now()) > cast(:start as timestamptz)
    ),
    gaps as (
        select unnest(tstzmultirange(tstzrange(cast(:start as timestamptz),
                                               cast(:end as timestamptz))) - m) as g
        from covered
    )
    select lower(g) as gap_start, upper(g) as gap_end,
           extract(epoch from upper(g) - lower(g))::float8 as seconds
    from gaps order by 1"""
    return read_frame(engine, sql, {"start": lo, "end": hi}, utc=("gap_start", "gap_end"))


def recent_coverage_gaps(engine: Engine, hours: float = 24) -> pd.DataFrame:
    """:func:`coverage_gaps` over the last ``hours`` up to now (what the Health page shows)."""
    return coverage_gaps(engine, datetime.now(UTC) - timedelta(hours=hours), None)
