"""Daily active users of whole past local days, cached per time zone (migration 0009).

A local day's count of active users (:func:`presence_core.analytics.daily_active_users`,
read from the sessions kept on write) depends only on the statuses in force during
that day, and the status in force at an instant is the last transition at or
before it. So a write whose earliest ``occurred_at`` is ``m`` changes no day that
ends at or before ``m``. The trigger of migration 0002 (replaced by 0009) lowers the
``dirty_from`` of the ``daily_active`` state row to that ``m``; before reading, this
module deletes the cached days ending after it and clears the mark. A year then
reads about 365 cached rows and computes only the days not cached yet (the period's
ragged first and last days, today), with the same SQL as before.

The days not cached are computed in stretches (:func:`day_cache.runs`); a period
starting and ending inside days (the Activity page's, the benchmark's) has two of
them, each a statement over every user (about 170 ms at 20,000 users, mostly a
probe per user). They run at once on as many connections, all in the snapshot the
first one exports (``pg_export_snapshot``): the same figures as one after the
other in one transaction, in about half the time on two cores.

Only whole local days are cached (a period's partial first or last day is always
computed), only for reads without filters (a team's or a user type's members can
change without any transition being written), and only the days no write has
changed since the snapshot they were computed from: the protocol (advisory lock,
mark, insert) is :mod:`presence_core.analytics.day_cache`'s, shared with the
per-user days of :mod:`presence_core.analytics.user_days`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text

from presence_core.analytics import day_cache, summaries
from presence_core.analytics.common import bind, load_pandas
from presence_core.analytics.snapshots import run_all
from presence_core.analytics.sql import DAYS

if TYPE_CHECKING:
    import pandas as pd

WORKERS = 2
"""Connections computing the uncached stretches at once (the machines we aim at have two cores)."""


_DAYS_SQL = (
    "with"
    + DAYS
    + """
select d.day, d.day_start, d.day_end, c.active_users
from days d left join presence_daily_active c
  on c.tz = cast(:tz as text) and c.day = d.day and c.day_end = d.day_end
 and c.day_end <= coalesce(cast(:valid as timestamptz), 'infinity')
order by d.day"""
)


def daily_active_users(engine: Engine, lo: datetime, hi: datetime, zone: ZoneInfo) -> pd.DataFrame:
    """``date, active_users`` for every local day of ``zone`` overlapping ``[lo, hi)``
    (``hi`` already clamped to now), all users: whole days cached, the rest computed
    from the summaries and the whole past days among them cached."""
    pd_ = load_pandas()
    sql = text(summaries.daily_active_users_sql())
    with engine.connect() as conn, day_cache.reading(conn) as primary:
        days, counts, keep = _compute(engine if primary else None, conn, sql, lo, hi, zone)
        if keep and primary:
            _keep(conn, keep)
    frame = pd_.DataFrame(
        {"date": [d.day for d in days], "active_users": [int(counts[d.day]) for d in days]}
    )
    return frame


def _compute(
    engine: Engine | None, conn: Connection, sql, lo: datetime, hi: datetime, zone: ZoneInfo
):
    """In one repeatable-read snapshot: the period's days, their counts (cached whole
    days, the others computed), and the whole days computed (to keep). With
    ``engine`` (on the primary), the stretches to compute beyond the first run on
    other connections in ``conn``'s snapshot (a replica computes them in turn)."""
    conn.execute(text("set transaction isolation level repeatable read"))
    conn.exec_driver_sql("set local work_mem = '64MB'")
    valid = conn.execute(text(day_cache.STATE)).scalar()
    days = conn.execute(
        text(_DAYS_SQL), {"start": lo, "end": hi, "tz": zone.key, "valid": valid}
    ).all()
    counts = {d.day: d.active_users for d in days}
    whole = [d for d in days if d.day_start >= lo and d.day_end <= hi]
    cached = {d.day for d in whole if d.active_users is not None}
    missing = [i for i, d in enumerate(days) if d.day not in cached]
    stretches = [
        bind(
            max(lo, days[first].day_start),
            min(hi, days[last].day_end),
            zone,
            include_hidden=True,
        )
        for first, last in day_cache.runs(missing)
    ]
    computed: dict = {}
    for rows in run_all(engine, conn, sql, stretches, WORKERS):
        computed.update({r[0]: r[1] for r in rows})
    conn.rollback()
    counts.update(computed)
    keep = [
        {"tz": zone.key, "day": d.day, "day_end": d.day_end, "n": computed[d.day]}
        for d in whole
        if d.day in computed
    ]
    return days, counts, keep


def _keep(conn: Connection, rows: list[dict]) -> None:
    """Insert the days computed from the snapshot that no write has changed since:
    those ending at or before the mark as it is now. Every write committed since the
    snapshot lowered the mark to its earliest instant (no reader cleared it meanwhile:
    this one holds :data:`day_cache.LOCK` shared), the share lock waits for a writer that has
    marked and not committed, and a write still to come marks after this insert."""
    with conn.begin():
        mark = conn.execute(text(day_cache.STATE + " for share")).scalar()
        rows = [r for r in rows if mark is None or r["day_end"] <= mark]
        if rows:
            conn.execute(
                text(
                    "insert into presence_daily_active (tz, day, day_end, active_users)"
                    " values (:tz, :day, :day_end, :n) on conflict (tz, day) do update"
                    " set day_end = excluded.day_end, active_users = excluded.active_users"
                ),
                rows,
            )
