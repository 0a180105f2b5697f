"""Sessions and time: sessions, time in each status, online seconds, session lengths
(DESIGN "Metrics": Session, Online seconds, Time in status). Flapping is in
:mod:`presence_core.analytics.flapping`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from presence_core.analytics import summaries, user_days
from presence_core.analytics.common import (
    DEFAULT_LENGTH_BINS,
    bind,
    empty_frame,
    load_pandas,
    read_frame,
    resolve_period,
    time_zone,
)
from presence_core.analytics.sql import SEGMENTS, SESSIONS, seg_days

if TYPE_CHECKING:
    import pandas as pd


SESSION_COLUMNS = (
    "user_id",
    "user_type",
    "user_name",
    "team",
    "started_at",
    "ended_at",
    "duration_seconds",
    "open",
)


def sessions_sql() -> str:
    """The sessions query (DESIGN's export columns), for :func:`sessions` and the export."""
    return (
        "with"
        + SESSIONS
        + """
    select s.user_id, u.user_type, u.user_name, u.team, s.started_at, s.ended_at,
           extract(epoch from s.ended_at - s.started_at)::float8 as duration_seconds, s.open
    from sess s join presence_users u using (user_id)
    order by s.started_at, s.user_id"""
    )


def sessions(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    tz: str | tzinfo | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Sessions overlapping ``[start, end)``: ``user_id, user_type, user_name, team,
    started_at, ended_at, duration_seconds, open``.

    ``started_at`` is the session's true start, even before ``start``. A session
    not closed by ``end`` (or now) ends there and has ``open`` true; its
    ``duration_seconds`` runs from ``started_at`` to that end.
    """
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(SESSION_COLUMNS)
    params = bind(lo, hi, zone, user_ids, user_type, team, include_hidden=include_hidden)
    return read_frame(engine, sessions_sql(), params, utc=("started_at", "ended_at"))


def time_in_status(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    statuses: Iterable[str] | None = None,
    include_hidden: bool = False,
    rollup: bool = True,
) -> pd.DataFrame:
    """Seconds each user spent in each status per local day: ``date, user_id, status,
    seconds`` (only the parts inside ``[start, end)``; rows with zero seconds left
    out). By default every present status; ``statuses`` names the ones to report
    (``offline`` included if asked).

    Present statuses are read from the summaries kept on write; ``offline`` (not
    summarised) and ``rollup=False`` read the transitions. Both give the same rows."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if hi <= lo:
        return empty_frame(("date", "user_id", "status", "seconds"))
    statuses = None if statuses is None else list(statuses)
    cached = rollup and summaries.serves(statuses)
    sql = summaries.time_in_status_sql() if cached else time_in_status_raw_sql()
    params = bind(
        lo,
        hi,
        zone,
        user_ids,
        user_type,
        team,
        include_hidden=include_hidden,
        statuses=statuses,
    )
    if cached:  # whole past local days from the per-user cache (user_days)
        built = user_days.cached_query(
            engine,
            sql,
            user_days.time_in_status_cached_sql(),
            "date, user_id, status",
            params,
            lo,
            hi,
            zone,
            closing=False,
            sentinel="null::date, null::text, null::text, null::float8",
        )
        return user_days.read_cached(engine, built, sql, params)
    return read_frame(engine, sql, params)


def time_in_status_raw_sql() -> str:
    """Time in status per local day from the transitions (the reference definition)."""
    return (
        "with"
        + SEGMENTS
        + """,
    parts as ("""
        + seg_days("seg", "x.seg_start", "x.seg_end")
        + """
        where (cast(:statuses as text[]) is null and x.present)
           or x.status = any(cast(:statuses as text[]))
    )
    select day as date, user_id, status,
           sum(extract(epoch from part_end - part_start))::float8 as seconds
    from parts where part_end > part_start
    group by day, user_id, status order by day, user_id, status"""
    )


def online_seconds(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    per_day: bool = True,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Seconds present (any status but offline) per user: ``date, user_id,
    online_seconds`` per local day, or ``user_id, online_seconds`` over the whole
    period when ``per_day`` is false (users present for no time are left out)."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    if not per_day:
        if hi <= lo:
            return empty_frame(("user_id", "online_seconds"))
        sql = (
            "with"
            + SEGMENTS
            + """
        select user_id, sum(extract(epoch from seg_end - seg_start))::float8 as online_seconds
        from seg where present group by user_id order by user_id"""
        )
        return read_frame(
            engine,
            sql,
            bind(lo, hi, zone, user_ids, user_type, team, include_hidden=include_hidden),
        )
    if hi <= lo:
        return empty_frame(("date", "user_id", "online_seconds"))
    sql = (
        "with"
        + SEGMENTS
        + """,
    parts as ("""
        + seg_days("seg", "x.seg_start", "x.seg_end")
        + """
        where x.present
    )
    select day as date, user_id,
           sum(extract(epoch from part_end - part_start))::float8 as online_seconds
    from parts where part_end > part_start
    group by day, user_id order by day, user_id"""
    )
    return read_frame(
        engine, sql, bind(lo, hi, zone, user_ids, user_type, team, include_hidden=include_hidden)
    )


def session_length_distribution(
    engine: Engine,
    start: datetime | date,
    end: datetime | date | None,
    bins: Sequence[int] = DEFAULT_LENGTH_BINS,
    user_type: str | None = None,
    team: str | None = None,
    tz: str | tzinfo | None = None,
    rollup: bool = True,
) -> pd.DataFrame:
    """How long sessions last: the closed sessions overlapping the period, counted
    by whole duration into ``bins`` (lower edges in seconds, ascending; the last
    bin is open-ended). Columns ``lower_seconds, upper_seconds`` (None for the
    last), ``sessions``; every bin present.

    Sessions of zero length (a present status and an ``offline`` at the same
    instant) are not counted: an empty span overlaps no period (the daily summary
    leaves them out too), and ``presence_sessions`` does not keep them. The
    sessions come from that table (kept on write: about one row per user and day
    instead of every transition of the period); ``rollup=False`` reads the
    transitions. Both give the same counts."""
    edges = sorted({int(b) for b in bins})
    if not edges or edges[0] != 0:
        edges = [0, *[b for b in edges if b > 0]]
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    counts = [0] * len(edges)
    if hi > lo:
        sql = (
            "with"
            + (summaries.SESSIONS if rollup else SESSIONS)
            + """
        select width_bucket(extract(epoch from ended_at - started_at)::float8,
                            cast(:edges as float8[])) as i, count(*)::int as n
        from sess where not open and ended_at > started_at group by 1"""
        )
        params = bind(
            lo,
            hi,
            zone,
            user_type=user_type,
            team=team,
            include_hidden=True,
            edges=[float(e) for e in edges],
        )
        with engine.connect() as conn:
            for i, n in conn.execute(text(sql), params):
                counts[max(i, 1) - 1] += n
    return load_pandas().DataFrame(
        {
            "lower_seconds": edges,
            "upper_seconds": [*edges[1:], None],
            "sessions": counts,
        }
    )
