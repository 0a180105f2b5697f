"""Helpers shared by every metric: periods, time zones, bound parameters, reading a frame.

The conventions below hold for every function of ``presence_core.analytics``:

- **Periods** are half-open ``[start, end)``. ``start``/``end`` are aware
  datetimes (naive means UTC), or ``date`` objects meaning whole local days in
  ``tz``: a ``start`` date is that day's local midnight, an ``end`` date is
  *inclusive* (the period runs to the next local midnight). An ``end`` in the
  future is clamped to now: nothing is counted after now.
- **tz** is an IANA name (``"America/New_York"``) or a ``ZoneInfo``. Local days
  follow it, so a day can last 23 or 25 hours across DST changes.
- **Filters** ``user_ids``, ``user_type``, ``team`` restrict the users; None means all.
- **Returned timestamps** are tz-aware UTC; **dates** are local dates in ``tz``.
- The state at a period's start counts: a user online since before ``start``
  with no transition inside the period is online for all of it.
- A **session** opens at a present status (anything but ``offline``) and closes
  at the next ``offline``; repeated or changing present statuses do not split it.
  Transitions are ordered by ``(occurred_at, id)``. Inferred rows count like any other.
- **Hidden users** (``presence_users.hide_last_seen``): every read about individual
  users (sessions, time in status, online seconds, availability, first in / last out,
  the daily summary, flapping, one user's timeline, the choices of users to pick)
  leaves them out, and the state tables (current presence, last seen) keep their
  row and status but blank their times, unless ``include_hidden=True``, which only
  a caller allowed to see them passes (the CLI's ``--include-hidden``; on the
  dashboard an administrator who asks). Aggregates (concurrency, the heatmap,
  daily active users, session lengths, counts) count them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, text

from presence_core.errors import PresenceError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BUCKETS",
    "DEFAULT_AVAILABLE",
    "DEFAULT_LENGTH_BINS",
    "OFFLINE",
    "period_params",
    "resolve_period",
    "time_zone",
]


def load_pandas():
    """pandas, imported on first use (it costs a second and 100 MB; the CLI's
    other commands, and the export, never need it)."""
    import pandas

    return pandas


OFFLINE = "offline"
DEFAULT_AVAILABLE = ("online",)

BUCKETS: dict[str, timedelta | None] = {
    "minute": timedelta(minutes=1),
    "5 minutes": timedelta(minutes=5),
    "hour": timedelta(hours=1),
    "day": None,  # local days: 23, 24 or 25 hours
}

DEFAULT_LENGTH_BINS: tuple[int, ...] = (0, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200)


def time_zone(tz: str | tzinfo | None) -> ZoneInfo:
    """``tz`` as a ``ZoneInfo`` (None: UTC); :class:`PresenceError` for an unknown or
    non-IANA zone, so every metric, the export and the CLI reject it the same way."""
    if tz is None:
        return ZoneInfo("UTC")
    if isinstance(tz, ZoneInfo):
        return tz
    if isinstance(tz, tzinfo):
        name = tz.tzname(None)
        if name == "UTC":
            return ZoneInfo("UTC")
        raise PresenceError(f"time zone {tz!r} is not an IANA zone; pass a name or ZoneInfo")
    try:
        return ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PresenceError(f"unknown time zone {tz!r}") from exc


def instant(value: datetime | date, tz: ZoneInfo, is_end: bool) -> datetime:
    """A period bound in UTC: a datetime as is (naive = UTC), a date as its local
    midnight in ``tz`` (the next one for an inclusive end date)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    day = value + timedelta(days=1) if is_end else value
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def resolve_period(
    start: datetime | date, end: datetime | date | None, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC as the module docstring says, the end clamped to now."""
    now = datetime.now(UTC)
    lo = instant(start, tz, False)
    hi = now if end is None else min(instant(end, tz, True), now)
    return lo, hi


def bind(
    start: datetime,
    end: datetime,
    tz: ZoneInfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    *,
    include_hidden: bool,
    **extra: Any,
) -> dict[str, Any]:
    """The bound parameters of the SQL blocks (``presence_core.analytics.sql``), plus
    ``extra`` ones for the query at hand. ``include_hidden`` has no default: every
    read says whether users who hide their last seen count (aggregates: yes;
    anything per user: only when asked, as the module docstring says)."""
    params: dict[str, Any] = {
        "start": start,
        "end": end,
        "tz": (tz or ZoneInfo("UTC")).key,
        "user_ids": None if user_ids is None else [str(u) for u in user_ids],
        "user_type": user_type,
        "team": team,
        "include_hidden": include_hidden,
    }
    params.update(extra)
    return params


def read_frame(
    engine: Engine, sql: str, params: dict[str, Any], utc: Sequence[str] = ()
) -> pd.DataFrame:
    """Run ``sql`` and return its rows as a DataFrame; ``utc`` columns become tz-aware UTC.

    The rows are taken from the driver's cursor as plain tuples, not through
    SQLAlchemy's ``Row`` objects as ``pandas.read_sql`` does: a text statement has
    no result processors, so the values are the same objects, and building a Row
    per result row was half the client's time for large frames (a team's month of
    time in status: 183,000 rows at 20,000 users). The frame is built as
    ``read_sql`` builds it (``from_records`` with ``coerce_float``); the tests
    compare both on every column type the readers return, empty results and
    NULLs included."""
    with engine.connect() as conn:
        # sorts of a few hundred thousand transitions stay in memory
        conn.exec_driver_sql("set local work_mem = '64MB'")
        columns, rows = fetch_rows(conn, sql, params)
    return frame_from_rows(rows, columns, utc)


def fetch_rows(conn: Connection, sql: str, params: dict[str, Any]) -> tuple[list[str], list]:
    """``sql``'s column names and rows, as the driver's tuples (see :func:`read_frame`)."""
    result = conn.execute(text(sql), params)
    columns = list(result.keys())
    rows = result.cursor.fetchall()
    result.close()
    return columns, rows


def frame_from_rows(rows: list, columns: Sequence[str], utc: Sequence[str] = ()) -> pd.DataFrame:
    """The frame :func:`read_frame` makes of these rows (as ``pandas.read_sql`` would)."""
    pandas = load_pandas()
    frame = pandas.DataFrame.from_records(rows, columns=list(columns), coerce_float=True)
    for column in utc:
        frame[column] = pandas.to_datetime(frame[column], utc=True)
    return frame


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    """An empty result with these columns (for periods that hold no time)."""
    return load_pandas().DataFrame({c: load_pandas().Series(dtype="object") for c in columns})


def period_params(
    start: datetime | date,
    end: datetime | date | None,
    tz: str | tzinfo | None = None,
    user_ids: Iterable[str] | None = None,
    user_type: str | None = None,
    team: str | None = None,
    include_hidden: bool = False,
) -> dict[str, Any]:
    """Bound parameters for :func:`sessions_sql` (and the building blocks), the
    period resolved as described in this module's docstring."""
    zone = time_zone(tz)
    lo, hi = resolve_period(start, end, zone)
    return bind(lo, max(lo, hi), zone, user_ids, user_type, team, include_hidden=include_hidden)


def availability_pct_sql(secs: str, day: str) -> str:
    """The daily summary's ``availability_pct``: the available seconds ``secs`` (a
    numeric of scale 6, or null for none) as a percentage of the whole local day
    ``day`` of ``:tz`` (23 to 25 hours). The expression of ``sql.DAILY_SELECT``; the
    cached days' read (:mod:`presence_core.analytics.user_days`) uses it from here."""
    tz = "cast(:tz as text)"
    return (
        f"(100.0 * coalesce({secs}, 0) / extract(epoch from"
        f" (({day} + 1)::timestamp at time zone {tz})"
        f" - ({day}::timestamp at time zone {tz})))::float8"
    )
