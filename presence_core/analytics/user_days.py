"""Each user's figures of whole past local days, cached per zone (migration 0011).

The time in status per user and local day, and the daily summary (export
``daily``), read from the summaries kept on write cost about 10 us per stored
array: 0.45 s for a team's month, 25 s for the ``daily`` export of a year of 5,000
users. A past local day's figures change only when a write touches an instant
before its end, so ``presence_user_days`` keeps, per zone, whole local day and
user, what :func:`fill_sql` computed for that day with the summaries' SQL (the
same blocks as :func:`presence_core.analytics.summaries.daily_summary_sql` and
``time_in_status_sql``): the sessions overlapping it, the seconds online, first in
and last out, and the microseconds in each present status. Reads then take cached
days as stored rows (about a microsecond each) and compute the others (the
period's partial first and last days, today, days not cached yet) with today's
SQL, so cached, computed and raw agree by construction (the tests compare them).

Which days are cached is recorded per (zone, day) for every user at once
(``presence_user_days_cover``): a read of any team or user fills all users' days,
so one team's first look at a cold month costs the whole organisation's month
once (figures in docs/analytics.md), and then every team, user type and user
reads cached rows. Filters, hidden users and names apply on read: a member's own
day does not depend on who else is in the team. A day ending exactly at the
period's end is always computed: there, a session closing at that instant counts
as still open (``last_offline`` empty), unlike in any longer period.

Exactness is :mod:`presence_core.analytics.day_cache`'s protocol, shared with the
daily active users: fills hold its lock shared from before their snapshot to the
check of the mark, keep only the days ending at or before it, and the one
statement that reads checks, in its own snapshot, that the days it takes from the
cache are still there and valid; if not (a write and another read came between),
the same statement computes the whole period instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text

from presence_core.analytics import day_cache, summaries
from presence_core.analytics.common import (
    availability_pct_sql,
    fetch_rows,
    frame_from_rows,
    read_frame,
)
from presence_core.analytics.snapshots import fetch_in_snapshot
from presence_core.analytics.sql import DAILY_PER_DAY, DAYS

if TYPE_CHECKING:
    import pandas as pd

_FILL_LOCK = 0x50525544  # one filler per zone at a time (the others find its days)
_MICRO = timedelta(microseconds=1)
_SHORTEST_DAY = timedelta(hours=22)  # (a local day lasts 23 to 25 hours; margin kept)


def fill_sql() -> str:
    """The cached rows of the local days ``[:d0, :d1]`` of ``:tz`` computed over
    ``[:start, :end)`` (every user: the caller binds no filter and includes hidden
    users), and inserted: the summaries' daily blocks (sessions, first in, last out,
    online) beside the time in each present status, per user and day."""
    return (
        "with"
        + summaries.SESSIONS
        + ","
        + DAYS
        + summaries.status_time_sql("statuses")
        + ","
        + DAILY_PER_DAY
        + """
    st as (
        select user_id, day, status, sum(us) as us from status_time
        where day between cast(:d0 as date) and cast(:d1 as date)
        group by user_id, day, status having sum(us) > 0
    ),
    sa as (
        select user_id, day, array_agg(status order by status) as statuses,
               array_agg(us order by status) as us
        from st group by user_id, day
    )
    insert into presence_user_days
        (tz, day, user_id, sessions, online, first_online, last_offline, statuses, status_us)
    select cast(:tz as text), coalesce(p.day, a.day), coalesce(p.user_id, a.user_id),
           p.n, p.online, p.first_online, p.last_offline,
           coalesce(a.statuses, '{}'), coalesce(a.us, '{}')
    from (select * from per_day where day between cast(:d0 as date) and cast(:d1 as date)) p
    full join sa a on a.user_id = p.user_id and a.day = p.day
    -- in the key's order: a year's rows lie in the table as the export reads them, so
    -- its index scan reads the heap in order (no sort of a million rows on disk)
    order by 2, 3
    on conflict (tz, day, user_id) do update set
        sessions = excluded.sessions, online = excluded.online,
        first_online = excluded.first_online, last_offline = excluded.last_offline,
        statuses = excluded.statuses, status_us = excluded.status_us"""
    )


_COVER_SQL = (
    "with"
    + DAYS
    + f"""
select d.day, d.day_start, d.day_end, c.day is not null as cached
from days d left join presence_user_days_cover c
  on c.tz = cast(:tz as text) and c.day = d.day and c.day_end = d.day_end
 and c.day_end <= {day_cache.MARK_SQL}
order by d.day"""
)


def _cacheable(day: Any, lo: datetime, hi: datetime) -> bool:
    """A whole local day of the period, over, that does not end at its end."""
    return day.day_start >= lo and day.day_end < hi


def _days(conn: Connection, lo: datetime, hi: datetime, zone: ZoneInfo) -> list:
    return conn.execute(text(_COVER_SQL), {"start": lo, "end": hi, "tz": zone.key}).all()


def fill(conn: Connection, lo: datetime, hi: datetime, zone: ZoneInfo) -> None:
    """Compute and keep the whole past days of ``[lo, hi)`` not cached yet (on the
    primary; a replica keeps nothing), by :mod:`day_cache`'s protocol."""
    with day_cache.reading(conn) as primary:
        if not primary:
            return
        with conn.begin():
            conn.execute(
                text("select pg_advisory_xact_lock(:k, hashtext(:tz))"),
                {"k": _FILL_LOCK, "tz": zone.key},
            )
            conn.exec_driver_sql("set local work_mem = '64MB'")
            days = _days(conn, lo, hi, zone)
            missing = [i for i, d in enumerate(days) if _cacheable(d, lo, hi) and not d.cached]
            if not missing:
                return
            computed = []
            for first, last in day_cache.runs(missing):
                # one microsecond into the next day: a session closing at the last
                # day's end is closed (as in the longer periods it is cached for)
                conn.execute(
                    text(fill_sql()),
                    {
                        "start": days[first].day_start,
                        "end": days[last].day_end + _MICRO,
                        "d0": days[first].day,
                        "d1": days[last].day,
                        "tz": zone.key,
                        "user_ids": None,
                        "user_type": None,
                        "team": None,
                        "include_hidden": True,
                        "statuses": None,
                    },
                )
                computed.extend(days[first : last + 1])
            # the mark now (see day_cache): days ending after it may have changed since
            # the first fill statement's snapshot; their rows go, the others are kept
            mark = conn.execute(text(day_cache.STATE + " for share")).scalar()
            kept = [d for d in computed if mark is None or d.day_end <= mark]
            dropped = [d.day for d in computed if not (mark is None or d.day_end <= mark)]
            if dropped:
                conn.execute(
                    text("delete from presence_user_days where tz = :tz and day = any(:days)"),
                    {"tz": zone.key, "days": dropped},
                )
            if kept:
                conn.execute(
                    text(
                        "insert into presence_user_days_cover (tz, day, day_end)"
                        " select :tz, unnest(cast(:days as date[])),"
                        " unnest(cast(:ends as timestamptz[]))"
                        " on conflict (tz, day) do update set day_end = excluded.day_end"
                    ),
                    {
                        "tz": zone.key,
                        "days": [d.day for d in kept],
                        "ends": [d.day_end for d in kept],
                    },
                )


def _renamed(sql: str, k: int) -> str:
    """``sql`` with its period ``:start``/``:end`` renamed ``:start_k``/``:end_k``."""
    return re.sub(r"(?<![:\w]):(start|end)\b", rf":\1_{k}", sql)


# The cached days the statement was built for: [:c_lo, :c_hi] but :computed_days (a
# few: the stretches computed between cached days). A range, not a list of the cached
# days: "= any(array)" compares each row with every element (an export from 1970 has
# 20,000 days). _OK: they are all still there and valid, in the statement's snapshot.
_CACHED_DAY = """{day} >= cast(:c_lo as date) and {day} <= cast(:c_hi as date)
    and {day} <> all(cast(:computed_days as date[]))"""
_OK = f"""(select count(*) from presence_user_days_cover c
    where c.tz = cast(:tz as text) and {_CACHED_DAY.format(day="c.day")}
      and c.day_end <= {day_cache.MARK_SQL}) = cast(:n_cached as int)"""


def _from_cached(also: str = "") -> str:
    """From the selected users' cached rows (USERS' filters, on presence_users joined),
    ``also`` joined to each."""
    return f"""
    from presence_user_days c join presence_users u on u.user_id = c.user_id {also}
    where c.tz = cast(:tz as text) and {_CACHED_DAY.format(day="c.day")} and {_OK}
      and (cast(:user_ids as text[]) is null or u.user_id = any(cast(:user_ids as text[])))
      and (cast(:user_type as text) is null or u.user_type = cast(:user_type as text))
      and (cast(:team as text) is null or u.team = cast(:team as text))
      and (cast(:include_hidden as boolean) or not u.hide_last_seen)"""


def time_in_status_cached_sql() -> str:
    """The cached days' rows of ``time_in_status_sql`` (same columns and values). The
    two arrays are unnested side by side in a select list (same lengths: pairs in
    order) rather than by ``unnest(a, b)`` in the from clause, whose function scan is
    set up again for every stored row (a team's month: 15,000 rows): 49 against 56 ms
    best, 67 against 85 ms median, for a 787-person team's 29 cached days (load 3.8).

    The seconds are ``us::float8 / 1000000`` in floating point, not the computed
    rows' numeric division then cast: the same double (a whole number of
    microseconds below 2**53 is exact as a double, and both round the exact quotient
    once, to nearest), without a numeric per row: 310 -> 210 ms of the server's CPU
    for a 3,089-person team's 29 cached days (175,000 rows) at 20,000 x 90."""
    pairs = "cross join lateral (select unnest(c.statuses) as status, unnest(c.status_us) as us) x"
    return f"""
    select c.day as date, c.user_id, x.status, (x.us::float8 / 1000000) as seconds
    {_from_cached(pairs)}
      and x.us > 0 and x.status <> 'offline'
      and (cast(:statuses as text[]) is null or x.status = any(cast(:statuses as text[])))"""


def daily_cached_sql(avail: Sequence[str]) -> str:
    """The cached days' rows of the daily summary (same columns and values): one pass
    over the stored rows in their key's order, the available microseconds summed by
    subscript (``status_us`` is aligned with ``statuses``), no join of rows."""
    wanted = " + ".join(
        f"coalesce(c.status_us[array_position(c.statuses, cast(:avail_{i} as text))], 0)"
        for i in range(len(avail))
    )
    secs = f"round(({wanted})::numeric / 1000000, 6)"
    return f"""
    select c.day as date, c.user_id, u.user_type, u.user_name, u.team,
           c.first_online, c.last_offline, c.sessions as sessions,
           c.online::float8 as online_seconds,
           {availability_pct_sql(secs, "c.day")} as availability_pct
    {_from_cached()}
      and c.sessions is not null"""


def avail_params(avail: Sequence[str]) -> dict[str, str]:
    """The parameters of :func:`daily_cached_sql` for the available statuses ``avail``
    (each once: the summaries' path counts a status once however often it is named)."""
    return {f"avail_{i}": status for i, status in enumerate(avail)}


def cached_query(
    engine: Engine,
    computed_sql: str,
    cached_sql: str,
    order: str,
    params: dict[str, Any],
    lo: datetime,
    hi: datetime,
    zone: ZoneInfo,
    closing: bool = True,
    sentinel: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """One statement giving ``computed_sql``'s rows for ``[lo, hi)`` (``params``
    bound for it): the whole past days from the cache (filled first), the others
    computed by ``computed_sql`` over their stretches; if, when it runs, a cached
    day it relies on is gone or stale, the whole period computed instead.

    ``sentinel`` (a select list of nulls, one per column, the first never null in a
    real row): instead of that whole-period branch, the statement then gives one
    row of ``sentinel``, and :func:`read_cached` computes the period again. For
    callers that read the rows themselves (not the export, which streams the
    statement): the branch, never run but planned at every read, was a third of
    the planning of a team's month of time in status (10-15 of 30-45 ms).

    ``closing``: the rows depend on whether a session closing at a stretch's end is
    closed (the daily summary's ``last_offline``), so a stretch ending before ``hi``
    is computed a microsecond further (its rows of the next day dropped). The time
    in status does not, and saves that microsecond's raw read for every user."""
    if hi - lo < _SHORTEST_DAY:  # no whole local day: nothing to fill or read cached
        return computed_sql, params
    with engine.connect() as conn:
        fill(conn, lo, hi, zone)
        days = _days(conn, lo, hi, zone)
        conn.rollback()
    cached = [i for i, d in enumerate(days) if _cacheable(d, lo, hi) and d.cached]
    if not cached:
        return computed_sql, params
    chosen = set(cached)
    stretches = day_cache.runs([i for i in range(len(days)) if i not in chosen])
    for first, last in stretches:  # a merged stretch computes the cached days inside too
        chosen -= set(range(first, last + 1))
    first_cached, last_cached = min(chosen), max(chosen)
    out = dict(params)
    out.update(
        c_lo=days[first_cached].day,
        c_hi=days[last_cached].day,
        computed_days=[
            days[i].day for i in range(first_cached, last_cached + 1) if i not in chosen
        ],
        n_cached=len(chosen),
    )
    parts = [f"select * from ({cached_sql}) cached_part"]
    for k, (first, last) in enumerate(stretches):
        out[f"start_{k}"] = max(lo, days[first].day_start)
        end = days[last].day_end
        out[f"end_{k}"] = hi if end >= hi else end + _MICRO if closing else end
        out[f"d0_{k}"], out[f"d1_{k}"] = days[first].day, days[last].day
        parts.append(
            f"select * from ({_renamed(computed_sql, k)}) part_{k}"
            f" where {_OK} and date between cast(:d0_{k} as date) and cast(:d1_{k} as date)"
        )
    if sentinel is None:
        parts.append(f"select * from ({computed_sql}) whole where not {_OK}")
    else:
        parts.append(f"select {sentinel} where not {_OK}")
    return _UNION.join(parts) + _ORDER + order, out


# how cached_query joins its parts (the cached rows first), so read_cached can split them
_UNION = "\nunion all\n"
_ORDER = "\norder by "


def read_cached(
    engine: Engine,
    built: tuple[str, dict[str, Any]],
    computed_sql: str,
    params: dict[str, Any],
    utc: Sequence[str] = (),
) -> pd.DataFrame:
    """The frame of a statement :func:`cached_query` ``built`` with a sentinel; if
    its cached days went stale before it ran (the sentinel row came back), the
    whole period computed by ``computed_sql`` with ``params``, in a statement of
    its own (its own snapshot: exact as of then).

    The cached rows and the computed stretches run at once, on two connections in
    one snapshot (the second imports the first's, ``pg_export_snapshot``; on a
    standby one after the other in it): they are about equal halves of the work
    for a team's month (reading 175,000 cached status rows; the ragged first and
    last days, a probe per member). Their days are disjoint and each half comes
    sorted, so a stable sort on the date (the first column) gives the statement's
    order."""
    sql, bound = built
    if sql == computed_sql:
        return read_frame(engine, sql, bound, utc)
    cached_part, rest = sql.split(_UNION, 1)
    first = cached_part + _ORDER + rest.rsplit(_ORDER, 1)[1]
    with engine.connect() as conn:
        conn.execute(text("set transaction isolation level repeatable read, read only"))
        conn.exec_driver_sql("set local work_mem = '64MB'")
        if conn.execute(text("select pg_is_in_recovery()")).scalar():
            columns, mine = fetch_rows(conn, first, bound)
            theirs = fetch_rows(conn, rest, bound)[1]
        else:
            snapshot = conn.execute(text("select pg_export_snapshot()")).scalar()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="user-days") as pool:
                other = pool.submit(fetch_in_snapshot, engine, snapshot, rest, bound)
                columns, mine = fetch_rows(conn, first, bound)
                theirs = other.result()
        conn.rollback()
    if any(row[0] is None for row in theirs):  # the sentinel: cached days went stale
        return read_frame(engine, computed_sql, params, utc)
    rows = mine + theirs
    rows.sort(key=itemgetter(0))
    return frame_from_rows(rows, columns, utc)
