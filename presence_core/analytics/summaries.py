"""Reads from the summaries kept on write (migration 0005), exact to the microsecond.

The tables (``presence_sessions``, ``presence_status_days``,
``presence_status_tails``) are kept by triggers in the writer's transaction, so
they always describe the transitions as they are; see docs/analytics.md. Each
block here gives the same rows as its raw-log counterpart in
:mod:`presence_core.analytics.sql` (the tests compare them, ``==``):

- :data:`SESSIONS` is ``sess`` (sessions overlapping ``[:start, :end)``, open
  ones ended at ``:end``) read from ``presence_sessions``: two index probes per
  user instead of a window over the transitions. Sessions of zero length are not
  stored (no metric but the ``sessions`` list counts them, and it reads the log).
- :func:`status_time_sql` is the time in present statuses per user per local day.
  Whole UTC quarter-hours inside one local day come from the cumulative arrays
  (two subscripts per user, day and status), the open segment from the tail;
  what is left (a period's ragged ends, and the quarter-hour around a local
  midnight that is not on a quarter-hour, in zones whose offset is not a multiple
  of 15 minutes) is read from the transitions, like the raw path. So every zone
  is exact; zones on quarter-hours (all of today's) read only the two ends raw.

Offline time is not summarised: asking for it goes to the raw path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from presence_core.analytics.common import (
    DEFAULT_AVAILABLE,
    OFFLINE,
    bind,
    empty_frame,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.sql import DAILY_PER_DAY, DAILY_SELECT, DAYS, USERS, seg_days

if TYPE_CHECKING:
    import pandas as pd

_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"


def _floor_q(value: str) -> str:
    return f"date_bin('15 minutes', {value}, {_ORIGIN})"


def _ceil_q(value: str) -> str:
    return f"date_bin('15 minutes', ({value}) + interval '899.999999 seconds', {_ORIGIN})"


def _us(lo: str, hi: str) -> str:
    return f"(extract(epoch from {hi} - {lo}) * 1000000)::bigint"


# Sessions overlapping [:start, :end) from presence_sessions: per user, from the one
# running at :start (sessions of a user never overlap) to the last starting before :end.
# The lower bound is found once per user (materialized: otherwise the planner may
# evaluate it again for every session row).
SESSIONS = (
    USERS
    + """,
sess_from as materialized (
    select su.user_id, coalesce((
        select max(p.started_at) from presence_sessions p
        where p.user_id = su.user_id and p.started_at <= cast(:start as timestamptz)),
        '-infinity') as lo
    from sel_users su
),
sess as (
    select s.user_id, s.started_at,
           case when s.ended_at is null or s.ended_at >= cast(:end as timestamptz)
                then cast(:end as timestamptz) else s.ended_at end as ended_at,
           (s.ended_at is null or s.ended_at >= cast(:end as timestamptz)) as open
    from sess_from f
    join presence_sessions s on s.user_id = f.user_id and s.started_at >= f.lo
     and s.started_at < cast(:end as timestamptz)
    where coalesce(s.ended_at, 'infinity') > cast(:start as timestamptz)
)"""
)


def _window_segments(keyed: bool, start: str, end: str, present_only: bool = False) -> str:
    """Each selected user's status segments inside each window of ``rag_win`` (``ws``,
    ``we``, and ``key`` when ``keyed``): the few minutes the summaries cannot answer
    as whole quarter-hours. Columns: ``[key,] user_id, status, <start>, <end>``.

    A user whose last transition (the tail) is at or before the window held the
    tail's status all of it: no read. The others are read from the raw log (a
    per-user probe back to the last transition before the window, then a range):
    for a period starting at an arbitrary instant in the past, that is every active
    member, and was most of a team's month of time in status.

    ``present_only`` (callers that drop offline segments): a window inside one UTC
    quarter-hour ``q`` is answered from the arrays too, for a user whose tail is at
    or after ``q``'s end (so every segment meeting ``q`` has ended and is counted):
    ``cum[k + 2] - cum[k + 1]`` is the user's microseconds in each present status in
    ``q``; a status with all 900 s of ``q`` held throughout the window, and present
    statuses summing to 0 (no array row that day counts 0) mean no present segment
    in it. Only users with a change inside ``q`` (a few percent) are read from the
    log. Exact: the arrays are the log's (same segments, integer microseconds)."""
    key = "w.key, " if keyed else ""
    decided = ""
    whole = ""
    if present_only:
        # the users whose window the arrays decide: (key, ws, user_id) -> whole status
        decided = f"""
    and not exists (
        select 1 from rag_q r
        where r.user_id = su.user_id and r.ws = w.ws {"and r.key = w.key" if keyed else ""})"""
        whole = f"""
    union all
    -- in one present status all of the window's quarter-hour: all of the window
    select {key.replace("w.", "r.")}r.user_id, r.whole, r.ws, r.we from rag_q r
    where r.whole is not null"""
    probe = f"""
    select {key}su.user_id, s.status, greatest(s.occurred_at, w.ws) as {start},
           least(coalesce(s.nxt, w.we), w.we) as {end}
    from rag_win w cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id and t.since > w.ws{decided}
    cross join lateral (
        select x.status, x.occurred_at,
               lead(x.occurred_at) over (order by x.occurred_at, x.id) as nxt
        from presence_transitions x
        where x.user_id = su.user_id and x.occurred_at < w.we
          and x.occurred_at >= coalesce((
              -- the last transition at or before the window: first looked for in the
              -- week before it (one or two monthly partitions, pruned at run time;
              -- an unbounded probe opens every partition's index), then further back
              select p.occurred_at from presence_transitions p
              where p.user_id = su.user_id and p.occurred_at <= w.ws
                and p.occurred_at > w.ws - interval '7 days'
              order by p.occurred_at desc limit 1), (
              select p.occurred_at from presence_transitions p
              where p.user_id = su.user_id and p.occurred_at <= w.ws - interval '7 days'
              order by p.occurred_at desc limit 1), '-infinity')
    ) s
    union all
    -- nothing changed since before the window: the tail's status holds all of it
    select {key}su.user_id, t.status, w.ws, w.we
    from rag_win w cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id and t.since <= w.ws{whole}
"""
    if not present_only:
        return probe
    return f"""
    with rag_q as materialized (
        -- windows inside one UTC quarter-hour q, users with no change from q's start
        -- to its end (tail at or after it): q's microseconds per present status
        select {key}w.ws, w.we, su.user_id, a.whole
        from rag_win w
        cross join lateral (select {_floor_q("w.ws")} as q0) q
        cross join lateral (
            select (q.q0 at time zone 'UTC')::date as day,
                   (extract(epoch from (q.q0 at time zone 'UTC')::time) / 900)::int as k
        ) i
        cross join sel_users su
        join presence_status_tails t on t.user_id = su.user_id
         and t.since >= q.q0 + interval '15 minutes'
        cross join lateral (
            select min(sd.status) filter (where d.us = 900000000) as whole,
                   coalesce(sum(d.us), 0) as total
            from presence_status_days sd
            cross join lateral (select sd.cum[i.k + 2] - sd.cum[i.k + 1] as us) d
            where sd.user_id = su.user_id and sd.day = i.day
        ) a
        where w.we <= q.q0 + interval '15 minutes'
          and (a.whole is not null or a.total = 0)
    ){probe}"""


# ``seg`` as SEGMENTS gives it (every selected user's segments inside [:start, :end),
# those of positive length), found through the tails: a user whose last transition is
# at or before :start holds its status throughout with no read of the log; the others
# are read from their last transition at or before :start. For the short edges of a
# concurrency read from the minute rollup (a partial minute at each end, often near
# now), where SEGMENTS would probe every user's log in every monthly partition.
WINDOW_SEGMENTS = (
    USERS
    + f""",
rag_win as (select cast(:start as timestamptz) as ws, cast(:end as timestamptz) as we),
rag_seg as ({_window_segments(False, "seg_start", "seg_end")}),
seg as (
    select user_id, status, status <> 'offline' as present, seg_start, seg_end
    from rag_seg where seg_end > seg_start
)"""
)


def status_time_sql(statuses: str) -> str:
    """CTEs (after ``sel_users``) ending in ``status_time(day, user_id, status, us)``:
    microseconds per local day of ``:tz``, user and present status inside
    ``[:start, :end)``, for statuses in the text[] parameter ``statuses`` (null: all
    present ones). Several rows may share a key: sum them."""
    wanted = (
        f"(cast(:{statuses} as text[]) is null or {{col}} = any(cast(:{statuses} as text[])))"
        f" and {{col}} <> 'offline'"
    )
    tz = "cast(:tz as text)"
    next_utc = "(u + interval '1 day') at time zone 'UTC'"
    local_day = f"d at time zone {tz}"
    next_local_day = f"(d + interval '1 day') at time zone {tz}"
    return f""",
qb as (
    select cast(:start as timestamptz) as lo, cast(:end as timestamptz) as hi,
           {_ceil_q("cast(:start as timestamptz)")} as clo,
           {_floor_q("cast(:end as timestamptz)")} as fhi
),
-- the UTC days of the period, or for a long one (an export from the beginning of
-- time, its default) those the selected users' arrays cover
span as (
    select case when b.fhi - b.clo <= interval '400 days'
                then (b.clo at time zone 'UTC')::date::timestamp
                else (select min(sd.day) from sel_users su
                      join presence_status_days sd on sd.user_id = su.user_id
                       and sd.day >= (b.clo at time zone 'UTC')::date)::timestamp
           end as lo,
           case when b.fhi - b.clo <= interval '400 days'
                then ((b.fhi - interval '1 microsecond') at time zone 'UTC')::date::timestamp
                else (select max(sd.day) from sel_users su
                      join presence_status_days sd on sd.user_id = su.user_id
                       and sd.day <= ((b.fhi - interval '1 microsecond') at time zone 'UTC')::date
                     )::timestamp
           end as hi
    from qb b
),
-- per UTC day of the span, the local days it holds as quarter-hour index ranges
-- [kx, ky) of that day's array (computed once per UTC day, not per stored row)
uday as (
    select u::date as uday, ld.day,
           (extract(epoch from ld.x - ld.d0) / 900)::int + 1 as kx,
           (extract(epoch from ld.y - ld.d0) / 900)::int + 1 as ky
    from qb b cross join span n
    cross join generate_series(n.lo, n.hi, interval '1 day') u
    cross join lateral (
        select d::date as day, u at time zone 'UTC' as d0,
               {_ceil_q(f"greatest(u at time zone 'UTC', {local_day}, b.clo)")} as x,
               {_floor_q(f"least({next_utc}, {next_local_day}, b.fhi)")} as y
        from generate_series(
            (greatest(u at time zone 'UTC', b.clo) at time zone {tz})::date::timestamp,
            ((least((u + interval '1 day') at time zone 'UTC', b.fhi)
              - interval '1 microsecond') at time zone {tz})::date::timestamp,
            interval '1 day') d
    ) ld
    where ld.y > ld.x
),
-- the same as arrays indexed by UTC day (1 = the period's first; at most three local
-- days in one UTC day), so that each stored array finds its ranges by subscript:
-- a join would hash the stored arrays themselves (megabytes, spilled to disk)
ug as (
    select u::date as u,
           array_agg(p.day order by p.day) as days, array_agg(p.kx order by p.day) as kxs,
           array_agg(p.ky order by p.day) as kys
    from qb b cross join span n
    cross join generate_series(n.lo, n.hi, interval '1 day') u
    left join uday p on p.uday = u::date
    group by u
),
-- (a missing part is an empty range [1, 1): no nulls in the arrays)
ua as (
    select min(u) as first,
           array_agg(coalesce(days[1], u) order by u) as d1,
           array_agg(coalesce(kxs[1], 1) order by u) as x1,
           array_agg(coalesce(kys[1], 1) order by u) as y1,
           array_agg(coalesce(days[2], u) order by u) as d2,
           array_agg(coalesce(kxs[2], 1) order by u) as x2,
           array_agg(coalesce(kys[2], 1) order by u) as y2,
           array_agg(coalesce(days[3], u) order by u) as d3,
           array_agg(coalesce(kxs[3], 1) order by u) as x3,
           array_agg(coalesce(kys[3], 1) order by u) as y3
    from ug
),
core as (
    select v.day, sd.user_id, sd.status, sd.cum[v.ky] - sd.cum[v.kx] as us
    from qb b cross join ua a cross join sel_users su
    join presence_status_days sd on sd.user_id = su.user_id
     and sd.day >= (b.clo at time zone 'UTC')::date
     and sd.day <= ((b.fhi - interval '1 microsecond') at time zone 'UTC')::date
    cross join lateral (values
        (a.d1[sd.day - a.first + 1], a.x1[sd.day - a.first + 1], a.y1[sd.day - a.first + 1]),
        (a.d2[sd.day - a.first + 1], a.x2[sd.day - a.first + 1], a.y2[sd.day - a.first + 1]),
        (a.d3[sd.day - a.first + 1], a.x3[sd.day - a.first + 1], a.y3[sd.day - a.first + 1])
    ) v(day, kx, ky)
    where v.ky > v.kx and {wanted.format(col="sd.status")}
),
tailc as (
    select p.day, t.user_id, t.status, {_us("p.x", "p.y")} as us
    from qb b cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id
    cross join lateral (
        select d::date as day,
               greatest(t.since, {_ceil_q(f"greatest(d at time zone {tz}, b.clo)")}) as x,
               {_floor_q(f"least((d + interval '1 day') at time zone {tz}, b.fhi)")} as y
        from generate_series(
            (greatest(t.since, b.clo) at time zone {tz})::date::timestamp,
            ((b.fhi - interval '1 microsecond') at time zone {tz})::date::timestamp,
            interval '1 day') d
    ) p
    where t.since < b.fhi and p.y > p.x and {wanted.format(col="t.status")}
),
rag_ranges as (
    select tstzrange(b.lo, least(b.clo, b.hi)) as r from qb b where b.lo < least(b.clo, b.hi)
    union all
    select tstzrange(greatest(b.fhi, b.lo), b.hi) from qb b where greatest(b.fhi, b.lo) < b.hi
    union all
    select tstzrange(greatest({_floor_q("m.day_start")}, b.lo),
                     least({_ceil_q("m.day_start")}, b.hi))
    from qb b cross join days m
    where m.day_start > b.lo and m.day_start < b.hi
      and {_floor_q("m.day_start")} <> m.day_start
),
rag_win as (
    select lower(r) as ws, upper(r) as we
    from (select unnest(range_agg(r)) as r from rag_ranges) x
),
rag_seg as ({_window_segments(False, "seg_start", "seg_end", present_only=True)}),
rag as ({seg_days("rag_seg", "x.seg_start", "x.seg_end")}
    where {wanted.format(col="x.status")}
),
status_time as (
    select day, user_id, status, us from core
    union all select day, user_id, status, us from tailc
    union all
    select day, user_id, status, {_us("part_start", "part_end")} from rag
    where part_end > part_start
)"""


def time_in_status_sql() -> str:
    """:func:`presence_core.analytics.time_in_status` from the summaries."""
    return (
        "with"
        + USERS
        + ","
        + DAYS
        + status_time_sql("statuses")
        + """
    select day as date, user_id, status, (sum(us)::numeric / 1000000)::float8 as seconds
    from status_time group by day, user_id, status having sum(us) > 0
    order by day, user_id, status"""
    )


def daily_active_users_sql() -> str:
    """:func:`presence_core.analytics.daily_active_users` from the summaries: a user is
    active on a day when one of its sessions overlaps the day for some time. A
    session's part inside the period overlaps every local day from the one holding
    its first instant to the one holding its last, each for some time."""
    tz = "cast(:tz as text)"
    return (
        "with"
        + SESSIONS
        + ","
        + DAYS
        + f""",
    parts as (
        select user_id,
               (greatest(started_at, cast(:start as timestamptz)) at time zone {tz})::date
                   as d0,
               ((ended_at - interval '1 microsecond') at time zone {tz})::date as d1
        from sess where ended_at > greatest(started_at, cast(:start as timestamptz))
    ),
    active as (
        select d0 as day, user_id from parts where d1 = d0
        union
        select g::date, user_id from parts
        cross join lateral generate_series(d0, d1, interval '1 day') g where d1 > d0
    ),
    counts as (select day, count(*) as n from active group by day)
    select d.day as date, coalesce(c.n, 0)::int as active_users
    from days d left join counts c on c.day = d.day order by d.day"""
    )


def daily_summary_sql() -> str:
    """The daily summary (:func:`presence_core.analytics.daily.daily_summary_sql`'s rows,
    same parameters) from the summaries; available statuses must not include offline."""
    return (
        "with"
        + SESSIONS
        + ","
        + DAYS
        + status_time_sql("avail")
        + ","
        + DAILY_PER_DAY
        + """
    avail as (
        select user_id, day, round(sum(us)::numeric / 1000000, 6) as secs
        from status_time group by user_id, day
    )"""
        + DAILY_SELECT
    )


def serves(statuses: Iterable[str] | None) -> bool:
    """Whether the summaries hold these statuses (every status but offline)."""
    return statuses is None or OFFLINE not in set(statuses)


def status_seconds(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    statuses: Sequence[str] = DEFAULT_AVAILABLE,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Seconds per user per local day of ``tz`` in any of ``statuses`` (present ones
    only; offline raises ``ValueError``) inside ``[start, end)``: ``date, user_id,
    seconds`` (users with none that day left out). The rollup-backed read an
    availability figure needs: a shift inside each day is a period ``[start, end)``
    of its own (one call per shift, or the whole range with the day's shift as the
    period when shifts are whole days)."""
    if not serves(statuses):
        raise ValueError("offline time is not summarised; read it from the raw log")
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(("date", "user_id", "seconds"))
    sql = (
        "with"
        + USERS
        + ","
        + DAYS
        + status_time_sql("statuses")
        + """
    select day as date, user_id, (sum(us)::numeric / 1000000)::float8 as seconds
    from status_time group by day, user_id having sum(us) > 0 order by day, user_id"""
    )
    params = bind(
        lo,
        hi,
        zone,
        user_ids,
        user_type,
        team,
        include_hidden=include_hidden,
        statuses=list(statuses),
    )
    return read_frame(engine, sql, params)


# Seconds per span (key, [s, e)) and user in the wanted statuses: whole quarter-hours
# from the arrays, the open segment from the tail, the ragged ends of each span raw.
# SPANS_PARTS: the CTEs (after "with"), ending in parts(key, user_id, us), several rows
# per key and user (sum them).
SPANS_PARTS = (
    USERS
    + f""",
spans as (
    select u.key, u.s, u.e,
           {_ceil_q("u.s")} as cs, {_floor_q("u.e")} as ce
    from unnest(cast(:span_keys as date[]), cast(:span_starts as timestamptz[]),
                cast(:span_ends as timestamptz[])) u(key, s, e)
    where u.e > u.s
),
-- each span's whole quarter-hours per UTC day it touches, as the index range [kx, ky)
-- of that day's array (computed once per span and day, not per stored row)
span_days as (
    select q.key, g::date as uday,
           (extract(epoch from greatest(q.cs, g at time zone 'UTC') - (g at time zone 'UTC'))
            / 900)::int + 1 as kx,
           (extract(epoch from least(q.ce, (g + interval '1 day') at time zone 'UTC')
                    - (g at time zone 'UTC')) / 900)::int + 1 as ky
    from spans q cross join lateral generate_series(
        (q.cs at time zone 'UTC')::date::timestamp,
        ((q.ce - interval '1 microsecond') at time zone 'UTC')::date::timestamp,
        interval '1 day') g
    where q.ce > q.cs
),
-- (the days' bounds as constants, so that each user's arrays are one index range)
span_range as (select min(uday) as lo, max(uday) as hi from span_days),
core as (
    select q.key, sd.user_id, sd.cum[q.ky] - sd.cum[q.kx] as us
    from span_range r cross join sel_users su
    join presence_status_days sd on sd.user_id = su.user_id
     and sd.day >= r.lo and sd.day <= r.hi
    join span_days q on q.uday = sd.day
    where sd.status = any(cast(:statuses as text[]))
),
tailc as (
    select q.key, t.user_id, {_us("greatest(t.since, q.cs)", "q.ce")} as us
    from spans q cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id
    where greatest(t.since, q.cs) < q.ce and t.status = any(cast(:statuses as text[]))
),
rag_win as (
    select key, s as ws, least(cs, e) as we from spans where s < least(cs, e)
    union all
    select key, greatest(ce, cs, s), e from spans where greatest(ce, cs, s) < e
),
rag as ({_window_segments(True, "a", "b", present_only=True)}),
parts as (
    select key, user_id, us from core
    union all select key, user_id, us from tailc
    union all
    select key, user_id, {_us("a", "b")} from rag
    where b > a and status = any(cast(:statuses as text[]))
)"""
)
_SPANS_SQL = (
    "with"
    + SPANS_PARTS
    + """
select key, user_id, (sum(us)::numeric / 1000000)::float8 as seconds
from parts group by key, user_id having sum(us) > 0 order by key, user_id"""
)


def status_seconds_in_spans(
    engine: Engine,
    spans: Sequence[tuple[date, datetime, datetime]],
    statuses: Sequence[str] = DEFAULT_AVAILABLE,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Seconds each user spent in any of ``statuses`` (present ones only) inside each
    span ``(key, start, end)`` (aware datetimes, half-open; e.g. one shift per local
    date, from :mod:`presence_core.shifts`): ``key, user_id, seconds``, users with
    none left out. Ends in the future count up to now. One statement for all spans;
    the same figures as the raw log, exact, whatever the spans' alignment. What
    :mod:`presence_core.analytics.availability` can call instead of reading the log."""
    if not statuses or not serves(statuses):
        raise ValueError("statuses must be present statuses (offline is not summarised)")
    if not spans:
        return empty_frame(("key", "user_id", "seconds"))
    params = bind(
        datetime.now(UTC),
        datetime.now(UTC),
        None,
        user_ids,
        user_type,
        team,
        include_hidden=include_hidden,
        statuses=list(statuses),
        **span_params(spans),
    )
    return read_frame(engine, _SPANS_SQL, params)


def span_params(spans: Sequence[tuple[date, datetime, datetime]]) -> dict[str, list]:
    """The parameters of :data:`SPANS_PARTS` for ``spans`` (key, start, end): ends in
    the future count up to now."""
    now = datetime.now(UTC)
    return {
        "span_keys": [key for key, _, _ in spans],
        "span_starts": [lo.astimezone(UTC) for _, lo, _ in spans],
        "span_ends": [min(hi.astimezone(UTC), now) for _, _, hi in spans],
    }
