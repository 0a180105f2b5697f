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

Only whole local days are cached (a period's partial first or last day is always
computed), only for reads without filters (a team's or a user type's members can
change without any transition being written), and only from a snapshot that no
write has marked since: the rows are inserted under a share lock on the state row
in the same repeatable-read transaction that computed them, so a write committed
meanwhile makes the insert fail (the figures are still returned, just not kept),
and a write still to come waits for the insert and then marks the days it changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from presence_core.analytics import summaries
from presence_core.analytics.common import bind, load_pandas
from presence_core.analytics.sql import DAYS

if TYPE_CHECKING:
    import pandas as pd

MAX_RUNS = 4
"""Uncached stretches computed one by one; more are computed as one span (still exact)."""

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

# (a truncate's -infinity read as year 1: Python has no infinite datetime)
_STATE = (
    "select case when dirty_from = '-infinity' then timestamptz '0001-01-02 00:00:00+00'"
    " else dirty_from end from presence_rollup_state where name = 'daily_active'"
)


def _invalidate(conn: Connection) -> None:
    """Delete the cached days a write has touched since the last read (on the primary;
    a replica cannot write, and its readers skip the marked days instead)."""
    dirty = conn.execute(text(_STATE)).scalar()
    replica = dirty is not None and conn.execute(text("select pg_is_in_recovery()")).scalar()
    conn.rollback()
    if dirty is None or replica:
        return
    with conn.begin():
        dirty = conn.execute(text(_STATE + " for update")).scalar()
        if dirty is not None:
            conn.execute(text("delete from presence_daily_active where day_end > :d"), {"d": dirty})
            conn.execute(
                text(
                    "update presence_rollup_state set dirty_from = null where name = 'daily_active'"
                )
            )


def _runs(missing: list[int]) -> list[tuple[int, int]]:
    """Contiguous stretches (first, last index) of ``missing`` (sorted), at most
    :data:`MAX_RUNS` of them (beyond that, one stretch from the first to the last)."""
    runs: list[tuple[int, int]] = []
    for i in missing:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    if len(runs) > MAX_RUNS:
        return [(runs[0][0], runs[-1][1])]
    return runs


def daily_active_users(engine: Engine, lo: datetime, hi: datetime, zone: ZoneInfo) -> pd.DataFrame:
    """``date, active_users`` for every local day of ``zone`` overlapping ``[lo, hi)``
    (``hi`` already clamped to now), all users: whole days cached, the rest computed
    from the summaries and the whole past days among them cached."""
    pd_ = load_pandas()
    sql = text(summaries.daily_active_users_sql())
    with engine.connect() as conn:
        _invalidate(conn)
        conn.execute(text("set transaction isolation level repeatable read"))
        conn.exec_driver_sql("set local work_mem = '64MB'")
        valid = conn.execute(text(_STATE)).scalar()
        days = conn.execute(
            text(_DAYS_SQL), {"start": lo, "end": hi, "tz": zone.key, "valid": valid}
        ).all()
        counts = {d.day: d.active_users for d in days}
        whole = [d for d in days if d.day_start >= lo and d.day_end <= hi]
        cached = {d.day for d in whole if d.active_users is not None}
        missing = [i for i, d in enumerate(days) if d.day not in cached]
        computed: dict = {}
        for first, last in _runs(missing):
            part_lo = max(lo, days[first].day_start)
            part_hi = min(hi, days[last].day_end)
            params = bind(part_lo, part_hi, zone, include_hidden=True)
            computed.update({r[0]: r[1] for r in conn.execute(sql, params)})
        counts.update(computed)
        keep = [
            {"tz": zone.key, "day": d.day, "day_end": d.day_end, "n": computed[d.day]}
            for d in whole
            if d.day in computed and (valid is None or d.day_end <= valid)
        ]
        if keep and not conn.execute(text("select pg_is_in_recovery()")).scalar():
            _keep(conn, keep)
        conn.rollback()
    frame = pd_.DataFrame(
        {"date": [d.day for d in days], "active_users": [int(counts[d.day]) for d in days]}
    )
    return frame


def _keep(conn: Connection, rows: list[dict]) -> None:
    """Insert freshly computed days unless a write was committed since the snapshot
    (then the repeatable-read share lock fails and nothing is kept)."""
    try:
        with conn.begin_nested():
            conn.execute(text(_STATE + " for share"))
            conn.execute(
                text(
                    "insert into presence_daily_active (tz, day, day_end, active_users)"
                    " values (:tz, :day, :day_end, :n) on conflict (tz, day) do update"
                    " set day_end = excluded.day_end, active_users = excluded.active_users"
                ),
                rows,
            )
    except OperationalError as error:
        if not isinstance(error.orig, pg_errors.SerializationFailure):
            raise
        return
    conn.commit()
