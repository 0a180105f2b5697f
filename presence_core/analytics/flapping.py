"""Flapping users: a status changing many times within a short window (DESIGN
"Metrics"). Its own module because the read is tuned on its own (per-user sorted
arrays, parallel ranges of users) and sessions.py was growing past its size."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from presence_core.analytics.common import (
    bind,
    empty_frame,
    load_pandas,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.sql import USERS

if TYPE_CHECKING:
    import pandas as pd


def flapping_users(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    min_transitions: int = 6,
    window: timedelta = timedelta(minutes=10),
    user_type: str | None = None,
    team: str | None = None,
    include_hidden: bool = False,
    workers: int = 2,
) -> pd.DataFrame:
    """Users whose status changed at least ``min_transitions`` times within some
    span of ``window`` inside the period: ``user_id, user_name, team, transitions``
    (in the whole period), ``max_in_window``, ``burst_start`` (where the busiest
    window begins), most flapping first.

    Each selected user's times in the period are read once, by index, into one
    sorted array and checked there (see the query's comment): no window function
    over every row of the period, which cost most of this read. The users are
    split into ``workers`` ranges of ``user_id`` read at once on as many
    connections (the work is per user and PostgreSQL cannot run a per-user
    lateral query in its parallel workers); ``workers=1`` is one statement. The
    rows are the same either way."""
    zone = time_zone(None)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(
            ("user_id", "user_name", "team", "transitions", "max_in_window", "burst_start")
        )
    sql = (
        "with"
        + USERS
        + """
    -- Per selected user, one index range of the period's rows (ordered by occurred_at,
    -- the partitions' order: no sort) folded into one sorted array: cheaper than a
    -- window over every row in (user, time) order (a merge of the partitions and a
    -- tuplestore per user), and the user filters apply before any row is read.
    -- n >= :min_n transitions fit in a window iff, from some transition a[i], the
    -- (:min_n - 1)-th next one a[i + :lead_n] is inside it: the two slices compared
    -- element by element. Only those starts are counted exactly: a window from t holds
    -- width_bucket(t + win, a) - width_bucket(t - 1 us, a) transitions (the number
    -- <= t + win less the number < t; timestamps are whole microseconds). The busiest
    -- window starts at such a start: it holds >= :min_n transitions, and the first of
    -- the transitions at its instant sees them all.
    select su.user_id, u.user_name, u.team, f.transitions, f.max_in_window, f.burst_start
    from sel_users su
    cross join lateral (
        select cardinality(g.a)::int as transitions, b.n_in::int as max_in_window,
               b.t as burst_start
        from (
            select array_agg(t.occurred_at order by t.occurred_at) as a
            from presence_transitions t
            where t.user_id = su.user_id and t.occurred_at >= cast(:start as timestamptz)
              and t.occurred_at < cast(:end as timestamptz)
        ) g
        cross join lateral (
            select p.y as t,
                   width_bucket(p.y + cast(:win as interval), g.a)
                   - width_bucket(p.y - interval '1 microsecond', g.a) as n_in
            from (
                select unnest(g.a[cast(:lead_n as int) + 1:]) as x,
                       unnest(g.a[1 : cardinality(g.a) - cast(:lead_n as int)]) as y
            ) p
            where p.x <= p.y + cast(:win as interval)
            order by n_in desc, p.y
            limit 1
        ) b
    ) f
    join presence_users u on u.user_id = su.user_id
    where f.max_in_window >= :min_n
      and (cast(:from_user as text) is null or su.user_id >= cast(:from_user as text))
      and (cast(:to_user as text) is null or su.user_id < cast(:to_user as text))
    order by f.max_in_window desc, f.transitions desc, su.user_id"""
    )
    # a window of length W holds [t, t + W): counted as the closed [t, t + W - 1 us]
    params = bind(
        lo,
        hi,
        zone,
        user_type=user_type,
        team=team,
        include_hidden=include_hidden,
        win=window - timedelta(microseconds=1),
        min_n=int(min_transitions),
        lead_n=max(int(min_transitions), 1) - 1,
    )
    bounds = _user_ranges(engine, workers)

    def part(bound: tuple[str | None, str | None]) -> pd.DataFrame:
        users = {"from_user": bound[0], "to_user": bound[1]}
        return read_frame(engine, sql, {**params, **users}, utc=("burst_start",))

    if len(bounds) == 1:
        return part(bounds[0])
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        parts = list(pool.map(part, bounds))
    found = [p for p in parts if len(p)] or parts[:1]
    # the ranges follow user_id in the database's order, so a stable sort on the
    # counts alone keeps the statement's order by user_id among equals
    return (
        load_pandas()
        .concat(found, ignore_index=True)
        .sort_values(["max_in_window", "transitions"], ascending=False, kind="stable")
        .reset_index(drop=True)
    )


def _user_ranges(engine: Engine, workers: int) -> list[tuple[str | None, str | None]]:
    """``workers`` consecutive ranges ``[from, to)`` of ``user_id`` (None: unbounded)
    holding about as many users each, cut at quantiles in the database's order."""
    if workers <= 1:
        return [(None, None)]
    with engine.connect() as conn:
        cuts = conn.execute(
            text(
                "select percentile_disc(cast(:q as float8[])) within group (order by user_id)"
                " from presence_users"
            ),
            {"q": [k / workers for k in range(1, workers)]},
        ).scalar()
    if not cuts or None in cuts:
        return [(None, None)]
    edges = [None, *cuts, None]
    return list(zip(edges[:-1], edges[1:], strict=True))
