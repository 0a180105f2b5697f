"""Flapping users: a status changing many times within a short window (DESIGN
"Metrics"). Its own module because the read is tuned on its own.

The definition is one statement (:data:`EXACT_SQL`): per selected user, the
period's times in one sorted array, checked there. Over a week at 20,000 users
that reads 2.5 M transitions (about 0.5 s) for a few hundred users who flap. So a
read first narrows the users, exactly, and runs the definition for those only.
A window holding ``min_n`` transitions starts at the first of them, in one UTC
day; so the users who flap in the period are among the users of each of its UTC
days with ``min_n`` transitions within a window starting that day. Those of a
whole past day (for one ``min_n`` and window) are kept in ``presence_flapping_days``;
those of the day not over yet are computed from its part of the log (by time: an
index range), and kept as a prefix the next read goes on from (:func:`_open_days`).
Everything is read in one repeatable-read snapshot.

A day's users depend on the log from its start to its end plus a window (the
``day_end`` kept, :func:`_upto`), so a write whose earliest ``occurred_at`` is ``m``
changes no day whose ``day_end`` is at or before ``m``: the days are kept and
dropped under the mark and protocol of the other day caches
(:mod:`presence_core.analytics.day_cache`), and only once that instant is past.
Windows longer than :data:`MAX_WINDOW`, ``min_n`` below 2 and a database without
the table (before its migration) read every selected user, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, text

from presence_core.analytics import day_cache
from presence_core.analytics.common import (
    bind,
    empty_frame,
    load_pandas,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.snapshots import in_snapshot, run_all
from presence_core.analytics.sql import USERS

if TYPE_CHECKING:
    import pandas as pd


# The definition: per selected user (and, split by workers, per range of user_id), the
# transitions of [:start, :end) as one sorted array and its busiest window.
EXACT_SQL = (
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
"""The definition (see the comment inside): one row per flapping user."""

ZERO = timedelta(0)

KEEP_BEHIND = timedelta(minutes=10)
"""How far short of a period's end today's kept prefix stops (writes arrive a little late)."""

MAX_WINDOW = timedelta(hours=1)
"""Longer windows read every selected user (a day's users would depend on more of the next day)."""

COLUMNS = ("user_id", "user_name", "team", "transitions", "max_in_window", "burst_start")

# Per UTC day, the listed users (every one, hidden included: filters apply after)
# with :min_n transitions of [:start, :end) within :win from one transition before
# :before in that day: the slices' test of EXACT_SQL, kept for the starts' days.
_STARTS = """
cross join lateral (
    select unnest(g.a[cast(:lead_n as int) + 1:]) as x,
           unnest(g.a[1 : cardinality(g.a) - cast(:lead_n as int)]) as y
) p
where p.x <= p.y + cast(:win as interval) and p.y < cast(:before as timestamptz)
group by 1"""

# Whole days: per user, one index range of its rows (as EXACT_SQL reads them).
_DAY_USERS_SQL = """
select (p.y at time zone 'UTC')::date as day, array_agg(distinct su.user_id) as users
from presence_users su
cross join lateral (
    select array_agg(t.occurred_at order by t.occurred_at) as a
    from presence_transitions t
    where t.user_id = su.user_id and t.occurred_at >= cast(:start as timestamptz)
      and t.occurred_at < cast(:end as timestamptz)
) g""" + _STARTS.replace(
    "group by 1",
    """and (cast(:from_user as text) is null or su.user_id >= cast(:from_user as text))
  and (cast(:to_user as text) is null or su.user_id < cast(:to_user as text))
group by 1""",
)

# What there is of today: the rows by time (an index range; often few rows, where a
# probe per user would cost more), grouped by user.
_TODAY_USERS_SQL = (
    """
select (p.y at time zone 'UTC')::date as day, array_agg(distinct g.user_id) as users,
       array_agg(distinct g.user_id) filter (where p.y < cast(:keep_before as timestamptz))
           as keep
from (
    select t.user_id, array_agg(t.occurred_at order by t.occurred_at) as a
    from presence_transitions t
    where t.occurred_at >= cast(:start as timestamptz) and t.occurred_at < cast(:end as timestamptz)
    group by t.user_id
) g"""
    + _STARTS
)

_CACHED_SQL = """
select day, user_ids, day_end from presence_flapping_days
where min_n = :min_n and window_us = :window_us and day = any(cast(:days as date[]))
  and day_end <= coalesce(cast(:valid as timestamptz), 'infinity')"""

_KEEP_SQL = """
insert into presence_flapping_days (min_n, window_us, day, day_end, user_ids)
values (:min_n, :window_us, :day, :day_end, :users)
on conflict (min_n, window_us, day) do update
set day_end = excluded.day_end, user_ids = excluded.user_ids"""


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

    The users are first narrowed with the whole past UTC days kept (see the module
    docstring); without that table, all selected users are read, split into
    ``workers`` ranges of ``user_id`` read at once on as many connections (the
    work is per user and PostgreSQL cannot run a per-user lateral query in its
    parallel workers). The rows are the same either way."""
    zone = time_zone(None)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(COLUMNS)
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
        from_user=None,
        to_user=None,
    )
    if min_transitions >= 2 and ZERO < window <= MAX_WINDOW and _has_cache(engine):
        return _narrowed(engine, params, window, max(1, workers))
    bounds = _user_ranges(engine, workers)

    def part(bound: tuple[str | None, str | None]) -> pd.DataFrame:
        users = {"from_user": bound[0], "to_user": bound[1]}
        return read_frame(engine, EXACT_SQL, {**params, **users}, utc=("burst_start",))

    if len(bounds) == 1:
        return part(bounds[0])
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        return _merge(list(pool.map(part, bounds)))


def _has_cache(engine: Engine) -> bool:
    """Whether the database has ``presence_flapping_days`` (migration 0013; the day
    caches' mark empties it like the others, see day_cache)."""
    with engine.connect() as conn:
        found = conn.execute(text("select to_regclass('presence_flapping_days')")).scalar()
    return found is not None


def _narrowed(
    engine: Engine, params: dict[str, Any], window: timedelta, workers: int
) -> pd.DataFrame:
    """:data:`EXACT_SQL` for the users that may flap (module docstring), in one
    repeatable-read snapshot (split into ``workers`` shares of those users read at
    once, in that snapshot); the whole past days computed are kept after."""
    lo, hi = params["start"], params["end"]
    key = {"min_n": params["min_n"], "window_us": window // timedelta(microseconds=1)}
    now = datetime.now(UTC)
    first = lo.astimezone(UTC).date()
    days = [first + timedelta(days=k) for k in range((hi - _midnight(first)).days + 1)]
    days = [d for d in days if _midnight(d) < hi]
    # a day's users depend on the log up to its end plus a window: kept when that is past
    past = [d for d in days if _upto(d, window) <= now]
    with engine.connect() as conn, day_cache.reading(conn) as primary:
        if not primary:  # (a replica's reader keeps nothing and reads in turn, as daily_active)
            workers = 1
        conn.execute(text("set transaction isolation level repeatable read"))
        conn.exec_driver_sql("set local work_mem = '64MB'")
        valid = conn.execute(text(day_cache.STATE)).scalar()
        rows = conn.execute(text(_CACHED_SQL), {**key, "days": days, "valid": valid}).all()
        whole = {d: u for d, u, end in rows if end >= _upto(d, window)}
        known = {d: whole[d] for d in past if d in whole}
        users: set[str] = set()
        for found in known.values():
            users.update(found)
        missing = [i for i, d in enumerate(past) if d not in known]
        computed: dict[date, list[str]] = {past[i]: [] for i in missing}
        # each run of days to compute, for each range of users (read at once)
        ranges = _user_ranges(engine, workers) if missing else []
        pieces = [
            {
                **params,
                "start": _midnight(past[a]),
                "end": _upto(past[b], window),
                "before": _upto(past[b], ZERO),
                "from_user": from_user,
                "to_user": to_user,
            }
            for a, b in day_cache.runs(missing)
            for from_user, to_user in ranges
        ]
        for found_rows in run_all(engine, conn, text(_DAY_USERS_SQL), pieces, workers):
            for day, found in found_rows:
                users.update(found)
                if day in computed:  # (beyond day_cache.MAX_RUNS a run spans kept days too)
                    computed[day] = sorted({*computed[day], *found})
        keep = [{"day": d, "day_end": _upto(d, window), "users": u} for d, u in computed.items()]
        if len(past) < len(days):  # the days not over (with a window after): what there is
            prefix = {d: (u, end) for d, u, end in rows if d not in whole}
            keep += _open_days(conn, params, days[len(past) :], prefix, window, users)
        frame = _exact(engine, conn, params, sorted(users), workers)
        conn.rollback()
        if keep and primary:
            _keep(conn, key, keep)
    return frame


def _open_days(
    conn: Connection,
    params: dict[str, Any],
    days: list[date],
    prefix: dict[date, tuple[list[str], datetime]],
    window: timedelta,
    users: set[str],
) -> list[dict[str, Any]]:
    """Add to ``users`` those of the days not over (today, and yesterday for a window
    after its midnight), read from the log by time up to the period's end, and
    return today's prefix to keep. A kept prefix (``day_end`` ``u``: the users with a
    window starting from the day's start until ``u`` less a window, decided by the
    log before ``u``) spares the read of that part: the listener's day grows by
    what came since the last read. The prefix kept stops :data:`KEEP_BEHIND` short
    of the period's end, so that the batches written meanwhile (their earliest
    instant a little before now) do not drop it."""
    lo, hi = params["start"], params["end"]
    day = days[0]
    start = max(lo, _midnight(day))
    from_day_start = start == _midnight(day)
    kept: list[str] = []
    if len(days) == 1 and day in prefix and prefix[day][1] - window > start:
        kept, upto = prefix[day]
        start, from_day_start = upto - window, True
        users.update(kept)
    keep_upto = hi - KEEP_BEHIND
    keep_before = keep_upto - window if len(days) == 1 and from_day_start else start
    piece = {**params, "start": start, "end": hi, "before": hi, "keep_before": keep_before}
    more: set[str] = set(kept)
    for _, found, to_keep in conn.execute(text(_TODAY_USERS_SQL), piece):
        users.update(found)
        more.update(to_keep or ())
    if keep_before <= start:
        return []
    return [{"day": day, "day_end": keep_upto, "users": sorted(more)}]


def _exact(
    engine: Engine, conn: Connection, params: dict[str, Any], users: list[str], workers: int
) -> pd.DataFrame:
    """:data:`EXACT_SQL` for ``users`` in ``conn``'s snapshot: on ``conn``, or split into
    ``workers`` consecutive shares (in the database's order of ``user_id``) read at
    once, the others on connections importing that snapshot. With no user the
    statement still runs (the columns' types of an empty result are the statement's)."""

    def read(on: Connection, share: list[str]) -> pd.DataFrame:
        exact = {**params, "user_ids": share}
        return read_frame(_Within(on), EXACT_SQL, exact, utc=("burst_start",))

    if workers < 2 or len(users) < 2 * workers:
        return read(conn, users)
    ordered = conn.execute(
        text("select array(select unnest(cast(:u as text[])) order by 1)"), {"u": users}
    ).scalar()
    size = -(-len(ordered) // workers)
    shares = [ordered[k : k + size] for k in range(0, len(ordered), size)]
    snapshot = conn.execute(text("select pg_export_snapshot()")).scalar()

    def other(share: list[str]) -> pd.DataFrame:
        with in_snapshot(engine, snapshot) as theirs:
            return read(theirs, share)

    with ThreadPoolExecutor(max_workers=len(shares) - 1) as pool:
        futures = [pool.submit(other, share) for share in shares[1:]]
        parts = [read(conn, shares[0]), *(f.result() for f in futures)]
    return _merge(parts)


def _merge(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame from the parts read for consecutive ranges of ``user_id`` (each in
    the statement's order): a stable sort on the counts alone keeps the order by
    ``user_id`` among equals."""
    found = [p for p in parts if len(p)] or parts[:1]
    return (
        load_pandas()
        .concat(found, ignore_index=True)
        .sort_values(["max_in_window", "transitions"], ascending=False, kind="stable")
        .reset_index(drop=True)
    )


def _upto(day: date, window: timedelta) -> datetime:
    """Until when the log decides ``day``'s users: windows from its last instant on."""
    return _midnight(day + timedelta(days=1)) + window


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _keep(conn: Connection, key: dict[str, int], rows: list[dict[str, Any]]) -> None:
    """Insert the days computed that no write has changed since the snapshot: those
    whose ``day_end`` (until when the log decides them) is at or before the mark as
    it is now (the protocol of :func:`presence_core.analytics.daily_active._keep`)."""
    with conn.begin():
        mark = conn.execute(text(day_cache.STATE + " for share")).scalar()
        rows = [{**key, **r} for r in rows if mark is None or r["day_end"] <= mark]
        if rows:
            conn.execute(text(_KEEP_SQL), rows)


class _Within:
    """An engine-like face of one connection, for :func:`read_frame`: the read runs in
    that connection's transaction (its snapshot) instead of a new connection's."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        yield self._conn


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
