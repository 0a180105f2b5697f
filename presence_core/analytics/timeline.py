"""One user's timeline: their sessions in a period, split where the status changed."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from presence_core.analytics.common import (
    bind,
    empty_frame,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.sql import SEGMENTS

if TYPE_CHECKING:
    import pandas as pd

TIMELINE_COLUMNS = ("session", "status", "start", "end", "seconds")

# Each present segment of the user (as in every other metric: a status lasts until
# the next transition), numbered by the session it belongs to. A session starts at
# a present status following an offline one (or the user's first transition);
# `tr` begins at the last offline at or before :start, so the count is exact.
_TIMELINE_SQL = (
    "with"
    + SEGMENTS
    + """,
starts as (
    select occurred_at, id,
           sum(case when present and not was_present then 1 else 0 end)
               over (order by occurred_at, id) as n
    from (
        select occurred_at, id, status <> 'offline' as present,
               lag(status <> 'offline', 1, false) over (order by occurred_at, id) as was_present
        from tr
    ) f
),
parts as (
    select s.n, t.status,
           greatest(t.occurred_at, cast(:start as timestamptz)) as seg_start,
           coalesce(lead(t.occurred_at) over (order by t.occurred_at, t.id),
                    cast(:end as timestamptz)) as seg_end
    from tr t join starts s on s.occurred_at = t.occurred_at and s.id = t.id
)
select (dense_rank() over (order by n) - 1)::int as session, status,
       seg_start as start, seg_end as "end",
       extract(epoch from seg_end - seg_start)::float8 as seconds
from parts
where status <> 'offline' and seg_end > seg_start
order by seg_start
limit :max_rows"""
)


def user_timeline(
    engine: Engine,
    user_id: str,
    start: datetime | date,
    end: datetime | date | None = None,
    tz: str | tzinfo | None = None,
    max_rows: int = 50_000,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """One user's sessions overlapping ``[start, end)``, one row per stretch in one
    status: ``session`` (0, 1, … in time order), ``status``, ``start``, ``end``
    (UTC; a stretch running at ``start`` is cut there, one still running at ``end``
    ends there), ``seconds``. At most ``max_rows`` rows, the earliest."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(TIMELINE_COLUMNS)
    params = bind(lo, hi, zone, [user_id], include_hidden=include_hidden, max_rows=int(max_rows))
    return read_frame(engine, _TIMELINE_SQL, params, utc=("start", "end"))
