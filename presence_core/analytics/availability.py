"""Availability for a shift window, and who came in first and left last each day."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from presence_core.analytics import summaries
from presence_core.analytics.common import (
    DEFAULT_AVAILABLE,
    bind,
    empty_frame,
    fetch_rows,
    frame_from_rows,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.snapshots import fetch_in_snapshot
from presence_core.analytics.sql import SEGMENTS, SESSIONS, USERS
from presence_core.errors import PresenceError
from presence_core.shifts import ShiftWindow, TeamSettings, shift_window

if TYPE_CHECKING:
    import pandas as pd


def shift_windows(
    tz: str | tzinfo | None,
    start_date: date,
    end_date: date,
    shift_start: time = time(0),
    shift_end: time | None = None,
) -> list[ShiftWindow]:
    """The shift of each local day from ``start_date`` to ``end_date`` (inclusive) in
    ``tz``, as :func:`presence_core.shifts.shift_window` defines it (DST nights
    included): ``shift_end`` None runs to the next midnight, one at or before
    ``shift_start`` ends the next day."""
    zone = time_zone(tz)
    settings = TeamSettings("", zone.key, shift_start, time(0) if shift_end is None else shift_end)
    days = (end_date - start_date).days + 1
    return [shift_window(settings, start_date + timedelta(days=k)) for k in range(days)]


def availability(
    engine: Engine,
    start_date: date,
    end_date: date,
    tz: str | tzinfo | None = None,
    shift_start: time = time(0),
    shift_end: time | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    team: str | None = None,
    user_type: str | None = None,
    user_ids: Iterable[str] | None = None,
    include_hidden: bool = False,
    rollup: bool = True,
    per_user: bool = False,
) -> pd.DataFrame:
    """Availability per user per local day, both dates inclusive.

    Each day's shift runs from ``shift_start`` to ``shift_end`` local time in
    ``tz`` (``shift_end`` None: to the next midnight, the whole day; a
    ``shift_end`` at or before ``shift_start``: a night shift ending the next
    day). Columns ``date, user_id, user_name, team, available_seconds,
    shift_seconds, availability_pct`` with ``availability_pct`` = seconds in an
    available status inside the shift ÷ the shift's seconds × 100. Every
    selected user gets a row per day (0 when never available). The part of a
    shift after now counts as unavailable.

    Read from the summaries kept on write (each shift a span of
    :func:`presence_core.analytics.summaries.status_seconds_in_spans`'s SQL);
    ``offline`` among the available statuses, or ``rollup=False``, reads the
    transitions. Both give the same rows.

    ``per_user``: the period's totals per user instead (``user_id, user_name, team,
    available_seconds, shift_seconds``, summed in SQL: exact, and one row per
    person instead of one per person and day), for :func:`agent_summary`.
    """
    zone = time_zone(tz)
    if end_date < start_date:
        raise PresenceError("availability: end date is before start date")
    select = _PER_USER_SELECT if per_user else _SELECT
    windows = shift_windows(zone, start_date, end_date, shift_start, shift_end)
    lo = windows[0].start
    hi = min(windows[-1].end, datetime.now(UTC))
    extra = {}
    summarised = rollup and available_statuses and summaries.serves(available_statuses)
    if summarised:
        # each day's shift is a span of the summaries: whole quarter-hours from the
        # arrays, the shift's ragged ends (and what is open at now) from the log
        extra = summaries.span_params([(w.day, w.start, w.end) for w in windows])
        sql = "with" + summaries.SPANS_PARTS + ",\n" + _SHIFTS + _AVAIL_FROM_SPANS + select
    else:
        sql = "with" + SEGMENTS + ",\n" + _SHIFTS + _AVAIL_FROM_SEGMENTS + select
    params = bind(
        lo,
        hi if hi > lo else lo,
        zone,
        user_ids,
        user_type,
        team,
        include_hidden=include_hidden,
        w_day=[w.day for w in windows],
        w_start=[w.start for w in windows],
        w_end=[w.end for w in windows],
        avail=list(available_statuses),
        statuses=list(available_statuses),
        **extra,
    )
    if summarised and not per_user:
        return _read_in_halves(engine, sql, params)
    return read_frame(engine, sql, params)


_HALVES_FROM = 200
"""Selected users from which :func:`_read_in_halves` splits them (fewer: one statement)."""


def _read_in_halves(
    engine: Engine, sql: str, params: dict[str, Any], *, by_date: bool = True
) -> pd.DataFrame:
    """``sql``'s frame (rows ordered by date, then user_id; with ``by_date`` False,
    by user_id first) with the selected users
    read in two halves at once, on two connections in one snapshot (the second
    imports the first's; on a standby, or for few users, one statement). A team's
    month at 20,000 users is 95,000 rows whose every part is per user (the spans
    are the same for all), so the halves are equal shares of the server's work on
    a two-core machine. The users are listed in the database's order (its
    collation) and cut in the middle: within a day every user of the first half
    sorts before the second's, so a stable sort of the two halves' rows on the
    date is the statement's order; rows ordered by user first are in order as the
    halves come (a sort in Python's order of the ids would not be the collation's)."""
    with engine.connect() as conn:
        conn.execute(text("set transaction isolation level repeatable read, read only"))
        conn.exec_driver_sql("set local work_mem = '64MB'")
        users = conn.execute(text(_SELECTED), params).scalars().all()
        standby = conn.execute(text("select pg_is_in_recovery()")).scalar()
        if standby or len(users) < _HALVES_FROM:
            columns, rows = fetch_rows(conn, sql, params)
            conn.rollback()
            return frame_from_rows(rows, columns)
        half = len(users) // 2
        snapshot = conn.execute(text("select pg_export_snapshot()")).scalar()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="availability") as pool:
            first, second = users[:half], users[half:]
            other = pool.submit(
                fetch_in_snapshot, engine, snapshot, sql, {**params, **_half(second)}
            )
            columns, rows = fetch_rows(conn, sql, {**params, **_half(first)})
            rows += other.result()
        conn.rollback()
    if by_date:
        rows.sort(key=itemgetter(0))
    return frame_from_rows(rows, columns)


def _half(users: list[str]) -> dict[str, Any]:
    """A half's parameters: its users, and their range of ids (``users_from`` /
    ``users_to``, in the collation's order) for statements that bound a key with it."""
    return {"user_ids": users, "users_from": users[0], "users_to": users[-1]}


_SELECTED = "with" + USERS + "\nselect user_id from sel_users order by user_id"


_ALL_USERS = {"users_from": None, "users_to": None}


_SHIFTS = """
    shifts as (
        -- the windows of presence_core.shifts (one definition), computed in Python
        select w.day, w.sh_start, w.sh_end
        from unnest(cast(:w_day as date[]), cast(:w_start as timestamptz[]),
                    cast(:w_end as timestamptz[])) as w(day, sh_start, sh_end)
    ),"""

# avail(day, user_id, secs): seconds available inside each day's shift, from the log
_AVAIL_FROM_SEGMENTS = """
    sh as (
        select array_agg(sh_start order by day) as st, array_agg(sh_end order by day) as en,
               array_agg(day order by day) as days, count(*)::int as n
        from shifts
    ),
    -- each available segment against the shifts around it: i is the last shift
    -- starting at or before it, j the last starting before its end (shifts are
    -- at most a day long and never overlap, so most segments touch i and i + 1)
    sa as (
        select s.user_id, s.seg_start as a, s.seg_end as b,
               width_bucket(s.seg_start, sh.st) as i, width_bucket(s.seg_end, sh.st) as j
        from seg s cross join sh
        where s.status = any(cast(:avail as text[]))
    ),
    pieces as (
        select x.user_id, x.k,
               extract(epoch from least(x.b, sh.en[x.k]) - greatest(x.a, sh.st[x.k])) as secs
        from (
            select user_id, a, b, i as k from sa where i >= 1
            union all
            select user_id, a, b, i + 1 from sa where j >= i + 1
            union all
            select sa.user_id, sa.a, sa.b, k from sa
            cross join lateral generate_series(sa.i + 2, sa.j) k where sa.j >= sa.i + 2
        ) x cross join sh
        where x.k <= sh.n
    ),
    avail as (
        select sh.days[p.k] as day, p.user_id, sum(p.secs) filter (where p.secs > 0) as secs
        from pieces p cross join sh
        group by 1, 2
    )"""

# the same from the summaries (each shift a span; microseconds, exact, scale 6 like
# the log's epoch seconds so that the percentages below divide the same numbers)
_AVAIL_FROM_SPANS = """
    avail as (
        select key as day, user_id, round(sum(us)::numeric / 1000000, 6) as secs
        from parts group by key, user_id having sum(us) > 0
    )"""

_SELECT = """
    select sh.day as date, su.user_id, u.user_name, u.team,
           coalesce(a.secs, 0)::float8 as available_seconds,
           extract(epoch from sh.sh_end - sh.sh_start)::float8 as shift_seconds,
           (100.0 * coalesce(a.secs, 0)
               / nullif(extract(epoch from sh.sh_end - sh.sh_start), 0))::float8
               as availability_pct
    from shifts sh cross join sel_users su
    join presence_users u on u.user_id = su.user_id
    left join avail a on a.day = sh.day and a.user_id = su.user_id
    order by sh.day, su.user_id"""

# the same summed per user over the period (numerics summed, then one float)
_PER_USER_SELECT = """
    select su.user_id, u.user_name, u.team,
           coalesce(a.secs, 0)::float8 as available_seconds,
           t.secs::float8 as shift_seconds
    from sel_users su join presence_users u on u.user_id = su.user_id
    cross join (select sum(extract(epoch from sh_end - sh_start)) as secs from shifts) t
    left join (select user_id, sum(secs) as secs from avail group by user_id) a
      on a.user_id = su.user_id
    order by su.user_id"""


def first_in_last_out(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_type: str | None = None,
    team: str | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Per local day: ``date, first_in_user, first_in_at`` (the earliest session
    start that day) and ``last_out_user, last_out_at`` (the latest session end
    that day, closed sessions only). Days with neither are left out."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(("date", "first_in_user", "first_in_at", "last_out_user", "last_out_at"))
    sql = (
        "with"
        + SESSIONS
        + """,
    ins as (
        select distinct on (day) day, user_id, started_at from (
            select (started_at at time zone cast(:tz as text))::date as day, user_id, started_at
            from sess where started_at >= cast(:start as timestamptz)
        ) s order by day, started_at, user_id
    ),
    outs as (
        select distinct on (day) day, user_id, ended_at from (
            select (ended_at at time zone cast(:tz as text))::date as day, user_id, ended_at
            from sess where not open
        ) s order by day, ended_at desc, user_id
    )
    select coalesce(i.day, o.day) as date, i.user_id as first_in_user,
           i.started_at as first_in_at, o.user_id as last_out_user, o.ended_at as last_out_at
    from ins i full join outs o on o.day = i.day
    order by 1"""
    )
    return read_frame(
        engine,
        sql,
        bind(lo, hi, zone, user_type=user_type, team=team, include_hidden=include_hidden),
        utc=("first_in_at", "last_out_at"),
    )


def agent_summary(
    engine: Engine,
    start_date: date,
    end_date: date,
    tz: str | tzinfo | None = None,
    shift_start: time = time(0),
    shift_end: time | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    team: str | None = None,
    user_type: str | None = None,
    include_hidden: bool = False,
    rollup: bool = True,
) -> pd.DataFrame:
    """One row per user over the whole period (the Availability page's table):
    ``user_id, user_name, team, available_seconds, shift_seconds, availability_pct``
    (summed over the days' shifts, as :func:`availability`), ``online_seconds``
    (present inside the period), ``first_in`` / ``last_out`` (the earliest session
    start and latest session end inside the period, as the daily summary's
    ``first_online`` / ``last_offline``), ``sessions`` (sessions of positive length
    overlapping the period, as the daily summary counts them), then one
    ``in <status>`` column of seconds per present status seen; most available first.

    Every figure is summed per user in SQL (a period of 90 days is 450,000 user-days
    for 5,000 people: fetching them per day, plus a raw-log pass for the time online,
    and summing in pandas made the page take 22 s), from the summaries kept on write:
    the sessions from ``presence_sessions``; the time in each status and the time
    available inside the shifts from one pass over the quarter-hour arrays
    (:data:`_TOTALS_FROM_SUMMARIES`). ``rollup=False`` reads the same figures from
    the transitions (with ``offline`` among the available statuses, the shifts'
    part does), the reference the tests compare with. The statements run at once,
    each on its own connection; the totals, the longest (3 s of a 90-day window for
    5,000 people; the sessions' half that) and per user from end to end, in two
    halves of the users in one snapshot (:func:`_read_in_halves`)."""
    zone = time_zone(tz)
    if end_date < start_date:
        raise PresenceError("agent_summary: end date is before start date")
    lo, hi = resolve_period(start_date, end_date, zone)
    filters = {"user_type": user_type, "team": team, "include_hidden": include_hidden}
    period = bind(lo, max(hi, lo), zone, **filters)
    windows = shift_windows(zone, start_date, end_date, shift_start, shift_end)
    # the shifts' total length, exact (integer microseconds, then one division)
    shift_us = sum((w.end - w.start) // timedelta(microseconds=1) for w in windows)
    no_sessions = ("user_id", "sessions", "online_seconds", "first_in", "last_out")
    summarised = rollup and available_statuses and summaries.serves(available_statuses)
    jobs: dict[str, Callable[[], pd.DataFrame]] = {
        "sessions": lambda: (
            read_frame(
                engine,
                _SESSION_TOTALS_SUMMARISED if rollup else _SESSION_TOTALS_RAW,
                period,
                utc=("first_in", "last_out"),
            )
            if hi > lo
            else empty_frame(no_sessions)
        )
    }
    if summarised:
        spans = summaries.span_params([(w.day, w.start, w.end) for w in windows])
        jobs["totals"] = lambda: _read_in_halves(
            engine,
            _TOTALS_FROM_SUMMARIES,
            {**period, "avail": list(available_statuses), **spans, **_ALL_USERS},
            by_date=False,
        )
    else:
        jobs["avail"] = lambda: availability(
            engine,
            start_date,
            end_date,
            zone,
            shift_start,
            shift_end,
            available_statuses,
            rollup=rollup,
            per_user=True,
            **filters,
        )
        jobs["status"] = lambda: (
            read_frame(engine, _STATUS_TOTALS_RAW, {**period, "statuses": None})
            if hi > lo
            else empty_frame(("user_id", "status", "seconds"))
        )
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="agents") as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        found = {name: future.result() for name, future in futures.items()}
    if summarised:
        totals = found["totals"]
        if totals.empty:
            return empty_frame(AGENT_COLUMNS)
        shift_part = totals["shift_us"].fillna(0).astype("int64")
        per_user = (
            totals.assign(shift_us=shift_part)
            .groupby("user_id", as_index=False, sort=True)
            .agg(user_name=("user_name", "first"), team=("team", "first"), us=("shift_us", "sum"))
        )
        per_user["available_seconds"] = per_user.pop("us") / 1_000_000
        per_user["shift_seconds"] = shift_us / 1_000_000
        in_status = totals[totals["period_us"].fillna(0) > 0]
        in_status = in_status.assign(seconds=in_status["period_us"].astype("int64") / 1_000_000)
    else:
        per_user = found["avail"]
        if per_user.empty:
            return empty_frame(AGENT_COLUMNS)
        in_status = found["status"]
    shift = per_user["shift_seconds"].where(per_user["shift_seconds"] > 0)
    per_user["availability_pct"] = (100.0 * per_user["available_seconds"] / shift).fillna(0.0)
    per_user = per_user.merge(found["sessions"], on="user_id", how="left")
    per_user["online_seconds"] = per_user["online_seconds"].fillna(0.0)
    per_user["sessions"] = per_user["sessions"].fillna(0).astype(int)
    per_user = per_user[list(AGENT_COLUMNS)]
    if not in_status.empty:
        pivot = in_status.pivot_table(
            index="user_id", columns="status", values="seconds", aggfunc="sum", fill_value=0.0
        )
        pivot.columns = [f"in {s}" for s in pivot.columns]
        per_user = per_user.merge(pivot.reset_index(), on="user_id", how="left")
        per_user[list(pivot.columns)] = per_user[list(pivot.columns)].fillna(0.0)
    per_user = per_user.sort_values(["availability_pct", "user_id"], ascending=[False, True])
    return per_user.reset_index(drop=True)


# Per user over [:start, :end): sessions of positive length overlapping it, the time
# present in it (their parts inside it: the same sum as the present segments'), the
# earliest start and the latest closing end inside it (the daily summary's first_online
# and last_offline over its days). From presence_sessions, or the log's sessions.
_SESSION_TOTALS = """
    select user_id, count(*)::int as sessions,
           sum(extract(epoch from ended_at - greatest(started_at, cast(:start as timestamptz))))
               ::float8 as online_seconds,
           min(started_at) filter (where started_at >= cast(:start as timestamptz)) as first_in,
           max(ended_at) filter (where not open) as last_out
    from sess where ended_at > started_at
    group by user_id"""
_SESSION_TOTALS_SUMMARISED = "with" + summaries.SESSIONS + _SESSION_TOTALS
_SESSION_TOTALS_RAW = "with" + SESSIONS + _SESSION_TOTALS

# Per user and present status, the seconds inside [:start, :end) from the log's segments
# (the reference for _TOTALS_FROM_SUMMARIES below).
_STATUS_TOTALS_RAW = (
    "with"
    + SEGMENTS
    + """
    select user_id, status, sum(extract(epoch from seg_end - seg_start))::float8 as seconds
    from seg where present group by user_id, status
    having sum(extract(epoch from seg_end - seg_start)) > 0"""
)


AGENT_COLUMNS = (
    "user_id",
    "user_name",
    "team",
    "available_seconds",
    "shift_seconds",
    "availability_pct",
    "online_seconds",
    "first_in",
    "last_out",
    "sessions",
)


# Per user and present status over the period [:start, :end): the microseconds in that
# status (``period_us``) and, for the available statuses, inside the days' shifts
# (``shift_us``, spans :span_starts/:span_ends), in ONE pass over the quarter-hour
# arrays. The arrays are the cost (90 days of 5,000 people: 920,000 rows of 97
# bigints, about 1 GB): reading them once for both figures, and taking the subscripts
# in the scan (the ``offset 0``) so that only three numbers per array reach the
# aggregate, not the arrays (which the planner otherwise hashes or sorts, spilling
# hundreds of MB), is what makes the per-agent table fast. Whole UTC quarter-hours come
# from the arrays: per UTC day, the period's index range and up to three shifts' ranges
# (shifts start 23 h or more apart, so a UTC day meets at most three), computed once per
# day and looked up by subscript; the open segment from the tail; what is not a whole
# quarter-hour (the period's ends, a shift's ragged ends, now) from the log, through the
# summaries' own window reader. The same numbers as the raw log's segments, to the
# microsecond (the tests compare them).
_TOTALS_FROM_SUMMARIES = (
    "with"
    + USERS
    + f""",
qb as (
    select cast(:start as timestamptz) as lo, cast(:end as timestamptz) as hi,
           {summaries._ceil_q("cast(:start as timestamptz)")} as clo,
           {summaries._floor_q("cast(:end as timestamptz)")} as fhi
),
spans as (
    select u.s, u.e, {summaries._ceil_q("u.s")} as cs, {summaries._floor_q("u.e")} as ce
    from unnest(cast(:span_starts as timestamptz[]), cast(:span_ends as timestamptz[])) u(s, e)
    where u.e > u.s
),
udays as (
    select g::date as u, g at time zone 'UTC' as d0, (g + interval '1 day') at time zone 'UTC' as d1
    from qb b cross join lateral (
        select least(case when b.fhi > b.clo then b.clo end,
                     (select min(cs) from spans where ce > cs)) as a,
               greatest(case when b.fhi > b.clo then b.fhi end,
                        (select max(ce) from spans where ce > cs)) as z
    ) n
    cross join generate_series(
        (n.a at time zone 'UTC')::date::timestamp,
        ((n.z - interval '1 microsecond') at time zone 'UTC')::date::timestamp,
        interval '1 day') g
),
-- per UTC day: the period's whole quarter-hours and each shift's, as index ranges [x, y)
-- of that day's array (an empty range [1, 1) where none)
uq as (
    select d.u, coalesce(p.x, 1) as px, coalesce(p.y, 1) as py, s.xs, s.ys
    from udays d cross join qb b
    left join lateral (
        select (extract(epoch from greatest(b.clo, d.d0) - d.d0) / 900)::int + 1 as x,
               (extract(epoch from least(b.fhi, d.d1) - d.d0) / 900)::int + 1 as y
        where least(b.fhi, d.d1) > greatest(b.clo, d.d0)
    ) p on true
    cross join lateral (
        select array_agg((extract(epoch from greatest(q.cs, d.d0) - d.d0) / 900)::int + 1
                         order by q.cs) as xs,
               array_agg((extract(epoch from least(q.ce, d.d1) - d.d0) / 900)::int + 1
                         order by q.cs) as ys
        from spans q where q.ce > q.cs and q.ce > d.d0 and q.cs < d.d1
    ) s
),
ua as (
    select min(u) as first, max(u) as last,
           array_agg(px order by u) as px, array_agg(py order by u) as py,
           array_agg(coalesce(xs[1], 1) order by u) as x1,
           array_agg(coalesce(ys[1], 1) order by u) as y1,
           array_agg(coalesce(xs[2], 1) order by u) as x2,
           array_agg(coalesce(ys[2], 1) order by u) as y2,
           array_agg(coalesce(xs[3], 1) order by u) as x3,
           array_agg(coalesce(ys[3], 1) order by u) as y3
    from uq
),
core as (
    select user_id, status, sum(pu)::bigint as pu, sum(su)::bigint as su from (
        select sd.user_id, sd.status, sd.cum[a.py[i]] - sd.cum[a.px[i]] as pu,
               case when sd.status = any(cast(:avail as text[]))
                    then sd.cum[a.y1[i]] - sd.cum[a.x1[i]] + sd.cum[a.y2[i]] - sd.cum[a.x2[i]]
                         + sd.cum[a.y3[i]] - sd.cum[a.x3[i]]
                    else 0 end as su
        from ua a cross join sel_users u
        join presence_status_days sd on sd.user_id = u.user_id
         and sd.day >= a.first and sd.day <= a.last
         -- a half's range of the key (_read_in_halves; null: all), so that it reads
         -- only its users' pages; known values, so the planner estimates it right
         and (cast(:users_from as text) is null or sd.user_id >= cast(:users_from as text))
         and (cast(:users_to as text) is null or sd.user_id <= cast(:users_to as text))
        cross join lateral (select sd.day - a.first + 1 as i) k
        offset 0
    ) x
    group by user_id, status
),
tailc as (
    select t.user_id, t.status,
           {summaries._us("greatest(t.since, b.clo)", "b.fhi")} as pu, 0::bigint as su
    from qb b cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id
    where greatest(t.since, b.clo) < b.fhi and t.status <> 'offline'
    union all
    select t.user_id, t.status, 0, {summaries._us("greatest(t.since, q.cs)", "q.ce")}
    from spans q cross join sel_users su
    join presence_status_tails t on t.user_id = su.user_id
    where greatest(t.since, q.cs) < q.ce and t.status = any(cast(:avail as text[]))
),
rag_win as (
    select 'p' as key, b.lo as ws, least(b.clo, b.hi) as we
    from qb b where b.lo < least(b.clo, b.hi)
    union all
    select 'p', greatest(b.fhi, b.clo, b.lo), b.hi
    from qb b where greatest(b.fhi, b.clo, b.lo) < b.hi
    union all
    select 's', s, least(cs, e) from spans where s < least(cs, e)
    union all
    select 's', greatest(ce, cs, s), e from spans where greatest(ce, cs, s) < e
),
rag as ({summaries._window_segments(True, "a", "b", present_only=True)}),
parts as (
    select user_id, status, pu, su from core
    union all select user_id, status, pu, su from tailc
    union all
    select user_id, status,
           case when key = 'p' then {summaries._us("a", "b")} else 0 end,
           case when key = 's' and status = any(cast(:avail as text[]))
                then {summaries._us("a", "b")} else 0 end
    from rag where b > a and status <> 'offline'
),
totals as (
    select user_id, status, sum(pu)::bigint as period_us, sum(su)::bigint as shift_us
    from parts group by user_id, status
)
select su.user_id, u.user_name, u.team, t.status, t.period_us, t.shift_us
from sel_users su join presence_users u on u.user_id = su.user_id
left join totals t on t.user_id = su.user_id
order by su.user_id, t.status"""
)
