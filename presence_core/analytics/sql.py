"""SQL building blocks of the metrics (common table expressions), one definition each.

Parameters every block uses: ``:start``, ``:end`` (timestamptz, the end already
clamped to now), ``:user_ids``, ``:user_type``, ``:team``, ``:include_hidden``;
the day blocks also ``:tz``. A query is ``"with" + BLOCK + ", ..." + final select``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from presence_core.analytics.common import BUCKETS, availability_pct_sql

USERS = """
sel_users as (
    select u.user_id from presence_users u
    where (cast(:user_ids as text[]) is null or u.user_id = any(cast(:user_ids as text[])))
      and (cast(:user_type as text) is null or u.user_type = cast(:user_type as text))
      and (cast(:team as text) is null or u.team = cast(:team as text))
      and (cast(:include_hidden as boolean) or not u.hide_last_seen)
)"""

# Per user, every transition from the last `offline` at or before :start (so the
# state at :start, and the true start of a session running at :start, are
# known) up to :end. Then segments: each transition's status lasts until the
# next transition, the last one until :end.
SEGMENTS = (
    USERS
    + """,
anchor as (
    -- looked for in the week before :start first (one or two monthly partitions: an
    -- unbounded backward probe opens every partition's index), then further back
    select su.user_id, coalesce((
        select t.occurred_at from presence_transitions t
        where t.user_id = su.user_id and t.status = 'offline'
          and t.occurred_at <= cast(:start as timestamptz)
          and t.occurred_at > cast(:start as timestamptz) - interval '7 days'
        order by t.occurred_at desc limit 1), (
        select t.occurred_at from presence_transitions t
        where t.user_id = su.user_id and t.status = 'offline'
          and t.occurred_at <= cast(:start as timestamptz) - interval '7 days'
        order by t.occurred_at desc limit 1), '-infinity'::timestamptz) as from_at
    from sel_users su
),
tr as (
    select a.user_id, t.status, t.occurred_at, t.id
    from anchor a cross join lateral (
        select t.status, t.occurred_at, t.id from presence_transitions t
        where t.user_id = a.user_id and t.occurred_at >= a.from_at
          and t.occurred_at < cast(:end as timestamptz)
        offset 0  -- keeps this a per-user index range scan (not flattened into a merge join)
    ) t
),
seg as (
    -- the window runs per user inside the lateral: many small in-memory sorts of
    -- one user's rows instead of one sort of every row (about 12% faster for a
    -- team's month); `tr` above is the same read, for the sessions' edges
    select a.user_id, s.status, s.status <> 'offline' as present, s.seg_start, s.seg_end
    from anchor a cross join lateral (
        select t.status,
               greatest(t.occurred_at, cast(:start as timestamptz)) as seg_start,
               coalesce(lead(t.occurred_at) over (order by t.occurred_at, t.id),
                        cast(:end as timestamptz)) as seg_end
        from presence_transitions t
        where t.user_id = a.user_id and t.occurred_at >= a.from_at
          and t.occurred_at < cast(:end as timestamptz)
    ) s
    where s.seg_end > s.seg_start
)"""
)

# Sessions overlapping [:start, :end): true start (even before :start), end at
# the closing offline, or :end and open.
SESSIONS = (
    SEGMENTS
    + """,
edge as (
    select user_id, occurred_at, id, present from (
        select user_id, occurred_at, id, status <> 'offline' as present,
               lag(status <> 'offline', 1, false) over w as was_present
        from tr window w as (partition by user_id order by occurred_at, id)
    ) f
    where present <> was_present
),
sess as (
    select user_id, started_at, coalesce(closed_at, cast(:end as timestamptz)) as ended_at,
           closed_at is null as open
    from (
        select user_id, present, occurred_at as started_at, lead(occurred_at) over w as closed_at
        from edge window w as (partition by user_id order by occurred_at, id)
    ) e
    where present and coalesce(closed_at, cast(:end as timestamptz)) > cast(:start as timestamptz)
)"""
)

# Local days of :tz covering [:start, :end).
DAYS = """
days as (
    select d::date as day,
           d at time zone cast(:tz as text) as day_start,
           (d + interval '1 day') at time zone cast(:tz as text) as day_end
    from generate_series(
        (cast(:start as timestamptz) at time zone cast(:tz as text))::date::timestamp,
        ((cast(:end as timestamptz) - interval '1 microsecond')
            at time zone cast(:tz as text))::date::timestamp,
        interval '1 day') d
)"""


def seg_days(source: str, lo: str, hi: str) -> str:
    """Rows of ``source`` split by the local days they overlap: adds day, part_start, part_end."""
    return f"""
    select x.*, d::date as day,
           d at time zone cast(:tz as text) as day_start,
           (d + interval '1 day') at time zone cast(:tz as text) as day_end,
           greatest({lo}, d at time zone cast(:tz as text), cast(:start as timestamptz))
               as part_start,
           least({hi}, (d + interval '1 day') at time zone cast(:tz as text),
                 cast(:end as timestamptz)) as part_end
    from {source} x
    cross join lateral generate_series(
        (greatest({lo}, cast(:start as timestamptz))
            at time zone cast(:tz as text))::date::timestamp,
        ((least({hi}, cast(:end as timestamptz)) - interval '1 microsecond')
            at time zone cast(:tz as text))::date::timestamp,
        interval '1 day') d"""


# ---------------------------------------------------------------------------
# concurrency


BOUNDS_DAY = """
bounds as (
    select d at time zone cast(:tz as text) as b
    from generate_series(
        (cast(:start as timestamptz) at time zone cast(:tz as text))::date::timestamp,
        cast(:end as timestamptz) at time zone cast(:tz as text), interval '1 day') d
)"""
BOUNDS_BIN = """
bounds as (
    select generate_series(
        date_bin(cast(:step as interval), cast(:start as timestamptz),
                 timestamptz '2000-01-01 00:00:00+00'),
        cast(:end as timestamptz), cast(:step as interval)) as b
)"""
# fixed steps from the zone's clock at :align (default :start): a piece of a longer
# period (a rollup read's edge) passes the period's start, so that its buckets are the
# period's even after an offset change by a part of the step (Lord Howe's 30 minutes)
BOUNDS_TRUNC = """
bounds as (
    select generate_series(
        date_bin(cast(:step as interval), cast(:start as timestamptz),
                 date_trunc(cast(:unit as text),
                            coalesce(cast(:align as timestamptz), cast(:start as timestamptz)),
                            cast(:tz as text))),
        cast(:end as timestamptz), cast(:step as interval)) as b
)"""
# bucket labels (aligned starts) and thresholds (starts, the first clipped to :start)
LABELS = """
labels as (
    select array_agg(b order by b) as lab,
           array_agg(greatest(b, cast(:start as timestamptz)) order by b) as thr
    from bounds where b < cast(:end as timestamptz)
)"""


def bounds_sql(bucket: str) -> str:
    if bucket == "day":
        return BOUNDS_DAY
    return BOUNDS_BIN if bucket == "5 minutes" else BOUNDS_TRUNC


def concurrency_sql(bucket: str, segments: str = SEGMENTS) -> str:
    """Per bucket of [:start, :end): peak, user_seconds (integral of users present)
    and seconds (the bucket's part inside the period): the one definition.

    ``segments`` is the block giving ``seg`` (``user_id, status, present, seg_start,
    seg_end`` inside the period): the raw log's :data:`SEGMENTS`, or the same rows
    found through the summaries' tails (``summaries.WINDOW_SEGMENTS``, for the short
    edges a rollup read leaves)."""
    return (
        "with"
        + segments
        + ","
        + bounds_sql(bucket)
        + ","
        + LABELS
        + """,
    ev as (
        select t, sum(d) as d from (
            select seg_start as t, 1 as d from seg
            where present and (cast(:statuses as text[]) is null
                               or status = any(cast(:statuses as text[])))
            union all
            select seg_end, -1 from seg
            where present and seg_end < cast(:end as timestamptz)
              and (cast(:statuses as text[]) is null or status = any(cast(:statuses as text[])))
            union all
            select unnest(thr), 0 from labels
        ) x group by t
    ),
    run as (
        select t, sum(d) over (order by t) as c,
               coalesce(lead(t) over (order by t), cast(:end as timestamptz)) as t_next
        from ev
    )
    select l.lab[width_bucket(r.t, l.thr)] as bucket, max(r.c)::int as peak,
           sum(r.c * extract(epoch from r.t_next - r.t))::float8 as user_seconds,
           sum(extract(epoch from r.t_next - r.t))::float8 as seconds
    from run r cross join labels l
    where r.t < cast(:end as timestamptz)
    group by 1 order by 1"""
    )


def bucket_params(bucket: str, align: datetime | None = None) -> dict[str, Any]:
    """The bucket's parameters; ``align``: the start of the period a piece belongs to."""
    return {
        "step": BUCKETS[bucket],
        "unit": "minute" if bucket == "minute" else "hour",
        "align": align,
    }


# The daily summary (DESIGN "Daily summary"), shared by its raw and summarised forms:
# each session cut at the local days it overlaps (``sday``, from a ``sess`` block), and
# per user and day the sessions, online seconds, first in and last out (``per_day``).
DAILY_PER_DAY = (
    """
    sday as ("""
    + seg_days("sess", "x.started_at", "x.ended_at")
    + """
    ),
    per_day as (
        select user_id, day, count(*) as n,
               sum(extract(epoch from part_end - part_start)) as online,
               min(started_at) filter (where started_at >= day_start) as first_online,
               max(ended_at) filter (where not open and ended_at <= day_end) as last_offline
        from sday where part_end > part_start
        group by user_id, day
    ),"""
)

# Its rows, from ``per_day`` and an ``avail`` block of available seconds per user and day.
DAILY_SELECT = f"""
    select p.day as date, p.user_id, u.user_type, u.user_name, u.team,
           p.first_online, p.last_offline, p.n::int as sessions,
           p.online::float8 as online_seconds,
           {availability_pct_sql("a.secs", "p.day")} as availability_pct
    from per_day p join presence_users u using (user_id)
    left join avail a on a.user_id = p.user_id and a.day = p.day
    order by p.day, p.user_id"""
