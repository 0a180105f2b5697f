"""Users present at once: concurrency per bucket (from the minute rollup where it
is worth it), the weekday × hour heatmap, and daily active users."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from presence_core.analytics import daily_active, summaries
from presence_core.analytics.common import (
    BUCKETS,
    bind,
    empty_frame,
    load_pandas,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.rollups import (
    ceil_minute,
    ceil_quarter,
    floor_minute,
    floor_quarter,
    refresh_rollups,
    rollup_valid_until,
)
from presence_core.analytics.sql import (
    DAYS,
    LABELS,
    SEGMENTS,
    bounds_sql,
    bucket_params,
    concurrency_sql,
    seg_days,
)
from presence_core.errors import PresenceError

if TYPE_CHECKING:
    import pandas as pd


# The rollup's buckets over [:start, :end), from its rows inside [:a, :b): the quarters
# of [:qa, :qb) when no bucket starts inside one of them (`aligned`: a zone whose offset
# is not a multiple of 15 minutes somewhere in the period reads minutes instead), and
# the minutes of the rest. Each branch is one index range; `aligned` is computed once.
# `whole` says whether every bucket start is on a minute at all (by the database's zone
# data, which places the buckets): if not, the caller discards this and reads the log.
_ROLLUP_SQL = """
with {bounds}, {labels},
aligned as (
    select coalesce(bool_and(date_bin(interval '15 minutes', t,
                                      timestamptz '2000-01-01 00:00:00+00') = t)
                        filter (where t > cast(:qa as timestamptz)
                                  and t < cast(:qb as timestamptz)), true) as ok,
           coalesce(bool_and(date_bin(interval '1 minute', t,
                                      timestamptz '2000-01-01 00:00:00+00') = t), true) as whole
    from labels l cross join unnest(l.thr) t
    where t > cast(:a as timestamptz) and t < cast(:b as timestamptz)
),
src as (
    select q.quarter as t, q.peak, q.user_seconds from presence_concurrency_quarters q
    where q.quarter >= cast(:qa as timestamptz) and q.quarter < cast(:qb as timestamptz)
      and (select ok from aligned)
    union all
    select m.minute, m.peak, m.user_seconds from presence_concurrency_minutes m
    where m.minute >= cast(:qa as timestamptz) and m.minute < cast(:qb as timestamptz)
      and not (select ok from aligned)
    union all
    select m.minute, m.peak, m.user_seconds from presence_concurrency_minutes m
    where m.minute >= cast(:a as timestamptz) and m.minute < cast(:qa as timestamptz)
    union all
    select m.minute, m.peak, m.user_seconds from presence_concurrency_minutes m
    where m.minute >= cast(:qb as timestamptz) and m.minute < cast(:b as timestamptz)
),
parts as (
    -- unnested once, not subscripted per row: thr[i] detoasts the array at each access
    -- (90 days of hours: 110 of the query's 135 ms)
    select u.lab as bucket, greatest(u.thr, cast(:a as timestamptz)) as s,
           least(coalesce(lead(u.thr) over (order by u.lab), cast(:end as timestamptz)),
                 cast(:b as timestamptz)) as e
    from labels l cross join unnest(l.lab, l.thr) as u(lab, thr)
),
agg as (
    select l.lab[width_bucket(r.t, l.thr)] as bucket, max(r.peak) as peak,
           sum(r.user_seconds) as user_seconds
    from src r cross join labels l
    group by 1
)
select p.bucket, coalesce(a.peak, 0)::int as peak, coalesce(a.user_seconds, 0)::float8
       as user_seconds, extract(epoch from p.e - p.s)::float8 as seconds,
       (select whole from aligned) as whole
from parts p left join agg a using (bucket)
where p.e > p.s
order by 1"""

ROLLUP_WORTH = timedelta(hours=6)
"""Concurrency spans longer than this are read from the minute rollup (refreshed as needed)."""


# ``seg`` for concurrency without a status filter, from the sessions kept on write: a
# user is present exactly while one of its sessions runs (a change between present
# statuses inside a session is a -1 and a +1 at the same instant in the segments, net 0,
# which changes no running count), so each session's part inside [:start, :end) is one
# present segment. Two index probes per user on one table, where the segments of the
# log probe each user's monthly partitions: the partial first minute of a period
# starting at some microsecond 90 days ago cost 0.6-1 s for 5,000 people that way.
# (Sessions of zero length are not kept; their segments, of zero length, count for
# nothing either.)
SESSION_SEGMENTS = (
    summaries.SESSIONS
    + """,
seg as (
    select user_id, 'present' as status, true as present,
           greatest(started_at, cast(:start as timestamptz)) as seg_start, ended_at as seg_end
    from sess where ended_at > greatest(started_at, cast(:start as timestamptz))
)"""
)


def _whole_minute_offsets(zone: ZoneInfo, lo: datetime, hi: datetime) -> bool:
    return all(
        (moment.astimezone(zone).utcoffset() or timedelta()).total_seconds() % 60 == 0
        for moment in (lo, hi)
    )


def concurrency(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    bucket: str = "hour",
    tz: str | tzinfo | None = None,
    user_type: str | None = None,
    team: str | None = None,
    statuses: Sequence[str] | None = None,
    rollup: bool = True,
    quarters: bool = True,
) -> pd.DataFrame:
    """Users present at once, per bucket: ``bucket, peak, mean``.

    ``bucket`` is ``minute``, ``5 minutes``, ``hour`` (fixed lengths aligned to
    ``tz``'s clock) or ``day`` (local days). ``bucket`` is each bucket's start
    (UTC); the first and last buckets only count their part inside the period.
    ``peak`` is the most users present at the same instant, ``mean`` the
    time-weighted average. ``statuses`` counts only users in those statuses
    (default: every present status).

    Without filters, spans longer than :data:`ROLLUP_WORTH` read whole minutes
    from the per-minute rollup (same SQL, computed ahead and kept valid by a
    trigger), refreshing it first when needed; the rest (the ragged edges, short
    or filtered periods) reads the summaries kept on write: the sessions (present
    while one runs) for the leading edge and long periods without a status filter,
    each user's segments through the status tails otherwise. ``rollup=False``
    computes everything from the transitions. Both give the same figures. Hourly
    and daily buckets read the rollup's whole UTC quarter-hours (15 times fewer
    rows) where the zone's bucket starts fall on quarter-hours, and its minutes
    elsewhere; ``quarters=False`` reads only its minutes (the same figures: the
    tests compare the levels).
    """
    if bucket not in BUCKETS:
        raise PresenceError(f"unknown bucket {bucket!r}; choose one of {', '.join(BUCKETS)}")
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(("bucket", "peak", "mean"))
    pieces: list[pd.DataFrame] = []
    a = b = lo
    if (
        rollup
        and user_type is None
        and team is None
        and statuses is None
        and hi - lo > ROLLUP_WORTH
        and _whole_minute_offsets(zone, lo, hi)
    ):
        a = ceil_minute(lo)
        with engine.connect() as conn:
            valid = rollup_valid_until(conn)
        wanted = floor_minute(hi)
        if valid is None or wanted - max(valid, a) > ROLLUP_WORTH:
            refresh_rollups(engine, wanted)
            with engine.connect() as conn:
                valid = rollup_valid_until(conn)
        # whole valid minutes only: a dirty mark inside a minute makes that minute stale
        b = max(a, floor_minute(min(wanted, valid))) if valid is not None else a
        if b > a:
            qa, qb = ceil_quarter(a), floor_quarter(b)
            if not quarters or bucket not in ("hour", "day") or qb <= qa:
                qa = qb = a  # minutes only
            sql = _ROLLUP_SQL.format(bounds=bounds_sql(bucket), labels=LABELS)
            params = bind(
                lo, hi, zone, include_hidden=True, a=a, b=b, qa=qa, qb=qb, **bucket_params(bucket)
            )
            rolled = read_frame(engine, sql, params, utc=("bucket",))
            if rolled.pop("whole").all():
                pieces.append(rolled)
            else:  # bucket starts inside minutes (for the database's zone data): the log
                a = b = lo
        else:
            a = b = lo
    # what the rollup leaves (its edges, or a short or filtered period) from the
    # summaries kept on write (SEGMENTS probes every user's log in every monthly
    # partition even for a partial minute); rollup=False: the raw log
    for part_lo, part_hi in ((lo, a), (b, hi)):
        if part_hi > part_lo:
            # from the sessions: the leading edge (a partial first minute, in the past),
            # where the tails would send every user to the log, and a long filtered
            # period (a team's 90 days: 0.3 s instead of 4.5-6.4 s through the tails);
            # through the tails: what is left since the last refresh (near now, most
            # users' tails before it), short periods, and a status filter
            if not rollup:
                segments = SEGMENTS
            elif statuses is None and (
                (part_hi == a and a > lo) or part_hi - part_lo > ROLLUP_WORTH
            ):
                segments = SESSION_SEGMENTS
            else:
                segments = summaries.WINDOW_SEGMENTS
            params = bind(
                part_lo, part_hi, zone, user_type=user_type, team=team, include_hidden=True
            )
            params.update(
                # the edges' buckets are the whole period's (aligned at lo)
                bucket_params(bucket, align=lo),
                statuses=None if statuses is None else list(statuses),
            )
            sql = concurrency_sql(bucket, segments)
            pieces.append(read_frame(engine, sql, params, utc=("bucket",)))
    frame = load_pandas().concat([p for p in pieces if not p.empty] or pieces, ignore_index=True)
    frame = frame.groupby("bucket", as_index=False).agg(
        peak=("peak", "max"), user_seconds=("user_seconds", "sum"), seconds=("seconds", "sum")
    )
    mean = (frame["user_seconds"] / frame["seconds"].where(frame["seconds"] > 0)).fillna(0.0)
    return load_pandas().DataFrame(
        {"bucket": frame["bucket"], "peak": frame["peak"].astype(int), "mean": mean.astype(float)}
    )


def weekday_hour_heatmap(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_type: str | None = None,
    team: str | None = None,
    value: str = "mean",
) -> pd.DataFrame:
    """Average concurrency by local weekday × hour: ``weekday`` (0 = Monday), ``hour``
    (0–23), ``value`` = the average over the period's hourly buckets of their
    ``mean`` (or their ``peak`` with ``value='peak'``)."""
    if value not in ("mean", "peak"):
        raise PresenceError("heatmap value must be 'mean' or 'peak'")
    zone = time_zone(tz)
    hourly = concurrency(engine, start, end, "hour", zone, user_type=user_type, team=team)
    if hourly.empty:
        return empty_frame(("weekday", "hour", "value"))
    local = hourly["bucket"].dt.tz_convert(zone.key)
    frame = load_pandas().DataFrame(
        {"weekday": local.dt.day_of_week, "hour": local.dt.hour, "value": hourly[value]}
    )
    return frame.groupby(["weekday", "hour"], as_index=False)["value"].mean()


def daily_active_users(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_type: str | None = None,
    team: str | None = None,
    rollup: bool = True,
) -> pd.DataFrame:
    """Distinct users present at some moment of each local day: ``date, active_users``
    (every day of the period, 0 included).

    Read from the sessions kept on write, and without filters, whole past days from
    the per-zone cache of :mod:`presence_core.analytics.daily_active` (``rollup=False``:
    from the transitions; all give the same rows)."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(("date", "active_users"))
    if rollup and user_type is None and team is None:
        return daily_active.daily_active_users(engine, lo, hi, zone)
    params = bind(lo, hi, zone, user_type=user_type, team=team, include_hidden=True)
    if rollup:
        return read_frame(engine, summaries.daily_active_users_sql(), params)
    sql = (
        "with"
        + SEGMENTS
        + ","
        + DAYS
        + """,
    parts as ("""
        + seg_days("seg", "x.seg_start", "x.seg_end")
        + """
        where x.present
    )
    select d.day as date, count(distinct p.user_id)::int as active_users
    from days d left join parts p on p.day = d.day and p.part_end > p.part_start
    group by d.day order by d.day"""
    )
    return read_frame(engine, sql, params)


def bucket_for(days: int, bucket: str, max_buckets: int) -> str:
    """``bucket``, or the next longer one (``minute`` → ``5 minutes`` → ``hour`` →
    ``day``) while ``days`` whole days would need more than ``max_buckets`` of them:
    a chart never gets more points than a page may send."""
    if bucket not in BUCKETS:
        raise PresenceError(f"unknown bucket {bucket!r}; choose one of {', '.join(BUCKETS)}")
    order = list(BUCKETS)
    while bucket != "day":
        step = BUCKETS[bucket] or timedelta(days=1)
        if days * timedelta(days=1) / step <= max_buckets:
            break
        bucket = order[order.index(bucket) + 1]
    return bucket
