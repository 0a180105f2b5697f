"""Maintenance of the concurrency rollup: per UTC minute (``presence_concurrency_minutes``)
and per UTC quarter-hour above it (``presence_concurrency_quarters``, migration 0010).

The minutes hold the peak and the integral of users present, computed by the same
SQL as every other concurrency figure
(:func:`presence_core.analytics.sql.concurrency_sql`); a trigger marks them dirty
from the earliest minute any write touches. The quarters are summed from the
minutes in the same transaction that writes them (peak = max, user_seconds = sum),
so that a long local-hour or local-day read takes 15 times fewer rows: every real
zone's offset is a multiple of 15 minutes, so its hours and days are unions of UTC
quarter-hours. A quarter is valid when it ends at or before the minutes' validity
(:func:`rollup_valid_until`). Reads live in ``concurrency``.

A history generated in one go (``generate-history`` on an empty table) already holds
every session it wrote, so :func:`build_from_sessions` computes the same minutes from
them in one sweep instead of recomputing them from the transitions afterwards (minutes
of work for a year of 5,000 people). The quarters are then summed by the same SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from presence_core.analytics.common import bind
from presence_core.analytics.sql import bucket_params, concurrency_sql
from presence_core.database import storage

_ROLLUP_LOCK = 0x50524553  # advisory lock key: one refresher at a time


def floor_minute(moment: datetime) -> datetime:
    """``moment`` cut to its minute."""
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    """The first whole minute at or after ``moment``."""
    floor = floor_minute(moment)
    return floor if floor == moment else floor + timedelta(minutes=1)


QUARTER = timedelta(minutes=15)

# The quarters of [:qlo, :hi) from the minutes there (a last quarter cut by :hi is
# partial until the next chunk, which starts at that quarter, rewrites it; readers
# never use a quarter ending after the minutes' validity).
_QUARTERS_SQL = """
insert into presence_concurrency_quarters (quarter, peak, user_seconds)
select date_bin(interval '15 minutes', minute, timestamptz '2000-01-01 00:00:00+00'),
       max(peak), sum(user_seconds)
from presence_concurrency_minutes
where minute >= cast(:qlo as timestamptz) and minute < cast(:hi as timestamptz)
group by 1"""


def floor_quarter(moment: datetime) -> datetime:
    """``moment`` cut to its UTC quarter-hour (returned in UTC)."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def ceil_quarter(moment: datetime) -> datetime:
    """The first UTC quarter-hour at or after ``moment`` (in UTC)."""
    floor = floor_quarter(moment)
    return floor if floor == moment else floor + QUARTER


def rollup_valid_until(conn) -> datetime | None:
    """Minutes before this are valid in the rollup (None: none are)."""
    row = conn.execute(
        text("select valid_until, dirty_from from presence_rollup_state where name = 'concurrency'")
    ).one_or_none()
    if row is None or row.valid_until is None:
        return None
    if row.dirty_from is not None and row.dirty_from < row.valid_until:
        return row.dirty_from
    return row.valid_until


def _chunks(start: datetime, target: datetime, chunk: timedelta) -> list[tuple[datetime, datetime]]:
    """``[start, target)`` cut into spans of about ``chunk`` whose inner boundaries fall on
    UTC quarter-hours, so that no quarter is summed from two spans' minutes (the spans
    may then be written in any order, or at once)."""
    spans = []
    lo = start
    while lo < target:
        hi = min(max(floor_quarter(lo + chunk), ceil_quarter(lo + timedelta(minutes=1))), target)
        spans.append((lo, hi))
        lo = hi
    return spans


_INSERT_MINUTES = (
    "insert into presence_concurrency_minutes (minute, peak, user_seconds) "
    "select bucket, peak, user_seconds from ({}) c"
)


def _write_span(conn, lo: datetime, hi: datetime) -> int:
    """Recompute the minutes of ``[lo, hi)`` and the quarters they make, in the caller's
    transaction; the minutes written. The quarter holding ``lo`` also sums the minutes
    before it, which are valid already (``lo`` is the validity or a quarter boundary)."""
    conn.execute(
        text("delete from presence_concurrency_minutes where minute >= :lo and minute < :hi"),
        {"lo": lo, "hi": hi},
    )
    params = bind(lo, hi, ZoneInfo("UTC"), include_hidden=True, statuses=None)
    params.update(bucket_params("minute"))
    written = conn.execute(text(_INSERT_MINUTES.format(concurrency_sql("minute"))), params).rowcount
    quarters = {"qlo": floor_quarter(lo), "hi": hi}
    conn.execute(
        text("delete from presence_concurrency_quarters where quarter >= :qlo and quarter < :hi"),
        quarters,
    )
    conn.execute(text(_QUARTERS_SQL), quarters)
    return written


def _set_valid_until(conn, moment: datetime) -> None:
    conn.execute(
        text("update presence_rollup_state set valid_until = :v where name = 'concurrency'"),
        {"v": moment},
    )


def _write_spans(engine: Engine, conn, spans: list[tuple[datetime, datetime]], workers: int) -> int:
    """Write ``spans`` (contiguous, in time order), moving the validity over each as it
    is committed: one by one on ``conn`` (each span and its validity in one
    transaction), or ``workers`` at a time on connections of their own, the validity
    then following the finished spans' contiguous prefix (a span finished early waits
    for those before it; after a crash the next refresh rewrites from the validity)."""
    if workers <= 1 or len(spans) <= 1:
        written = 0
        for lo, hi in spans:
            with conn.begin():
                written += _write_span(conn, lo, hi)
                _set_valid_until(conn, hi)
        return written

    def work(span: tuple[datetime, datetime]) -> int:
        with engine.begin() as own:
            return _write_span(own, *span)

    written = 0
    done: set[int] = set()
    prefix = 0  # spans[:prefix] are committed and covered by the validity
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, span): i for i, span in enumerate(spans)}
        try:
            for future in as_completed(futures):
                written += future.result()
                done.add(futures[future])
                if prefix in done:
                    while prefix in done:
                        prefix += 1
                    with conn.begin():
                        _set_valid_until(conn, spans[prefix - 1][1])
        finally:
            for future in futures:
                future.cancel()
    return written


def refresh_rollups(
    engine: Engine,
    until: datetime | None = None,
    chunk: timedelta = timedelta(days=7),
    workers: int = 1,
) -> int:
    """Bring the concurrency rollup (minutes and quarters) up to date, up to ``until`` (default
    now; whole minutes only), recomputing from the earliest change any write made.
    Returns the minutes written; 0 if another process is refreshing it, or on a
    read replica (which cannot write: its readers read the rollup as far as the
    primary made it valid, and the transitions for the rest).

    ``workers`` > 1 writes that many chunks at once, each on its own connection: for a
    first build after a bulk load (``generate-history``), where one backend computing
    week after week leaves the other cores idle. Readers see the same rollup either way."""
    target = floor_minute(min(until or datetime.now(UTC), datetime.now(UTC)).astimezone(UTC))
    with engine.connect() as conn:
        if conn.execute(text("select pg_is_in_recovery()")).scalar():
            conn.rollback()  # a read replica: it cannot write; readers use what it has
            return 0
        if not conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": _ROLLUP_LOCK}).scalar():
            conn.rollback()
            return 0
        conn.commit()
        try:
            with conn.begin():
                row = conn.execute(
                    text(
                        "select valid_until, dirty_from from presence_rollup_state"
                        " where name = 'concurrency' for update"
                    )
                ).one()
                start = row.valid_until
                if start is not None and row.dirty_from is not None:
                    start = min(start, row.dirty_from)
                if start is None:  # never built, or emptied
                    conn.execute(text("delete from presence_concurrency_minutes"))
                    conn.execute(text("delete from presence_concurrency_quarters"))
                    first = conn.execute(
                        text("select min(occurred_at) from presence_transitions")
                    ).scalar()
                    start = floor_minute(first) if first is not None else target
                start = floor_minute(start)
                conn.execute(
                    text(
                        "update presence_rollup_state set valid_until = :v, dirty_from = null"
                        " where name = 'concurrency'"
                    ),
                    {"v": start},
                )
            return _write_spans(engine, conn, _chunks(start, target, chunk), workers)
        finally:
            conn.execute(text("select pg_advisory_unlock(:k)"), {"k": _ROLLUP_LOCK})
            conn.commit()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MINUTE_US = 60_000_000


def epoch_us(moment: datetime) -> int:
    """``moment`` as whole microseconds since 1970 (exact, unlike ``timestamp()``)."""
    return (moment - _EPOCH) // _MICROSECOND


def minutes_of_sessions(
    sessions: Iterable[tuple[int, int | None]], lo: int, hi: int
) -> list[tuple[int, int, int]]:
    """Per minute of ``[lo, hi)`` (microseconds since 1970, whole minutes): ``(minute,
    peak, microseconds of users present)``, from every user's sessions ``(started,
    ended)`` (microseconds; ``ended`` None: still open).

    The figures of :func:`presence_core.analytics.sql.concurrency_sql` for the same
    history: a user counts while in a session (its present segments, back to back);
    changes at one instant are summed before the count is read, so a minute's peak is
    the largest count in force at its start or after any instant inside it, and its
    integral is the count times the time it holds. tests/test_rollups_refresh.py
    compares them with the rollup the SQL builds."""
    deltas: dict[int, int] = {}
    for started, ended in sessions:
        if ended is not None and ended <= max(started, lo):
            continue  # before the span, or of no length: counted nowhere
        at = max(started, lo)
        if at < hi:
            deltas[at] = deltas.get(at, 0) + 1
            if ended is not None and ended < hi:
                deltas[ended] = deltas.get(ended, 0) - 1
    times = sorted(deltas)
    minutes: list[tuple[int, int, int]] = []
    count = i = 0
    n = len(times)
    minute = lo
    while minute < hi:
        until = minute + _MINUTE_US
        if i < n and times[i] == minute:  # changes at the minute's first instant
            count += deltas[minute]
            i += 1
        if i == n or times[i] >= until:  # nothing changes inside: one entry
            minutes.append((minute, count, count * _MINUTE_US))
            minute = until
            continue
        peak, integral, since = count, 0, minute
        while i < n and times[i] < until:
            at = times[i]
            integral += count * (at - since)
            count += deltas[at]
            if count > peak:
                peak = count
            since = at
            i += 1
        minutes.append((minute, peak, integral + count * (until - since)))
        minute = until
    return minutes


def build_from_sessions(
    engine: Engine,
    sessions: Iterable[tuple[int, int | None]],
    transitions: int,
    users: Collection[str],
    until: datetime | None = None,
) -> int | None:
    """Build the whole rollup (minutes and quarters) up to ``until`` (default now) from
    the sessions of a history written in one go: ``transitions`` rows for ``users``,
    with ``sessions`` (microseconds since 1970, as :func:`minutes_of_sessions` takes)
    every session of those rows. Returns the minutes written, or None with nothing
    written when the table holds anything else (other rows, a user not listed in
    ``presence_users``, a refresh running, a read replica): the caller then
    refreshes the normal way.

    Checked under the refresher's advisory lock and the rollup state row's lock: a
    writer's trigger that marks the rollup dirty waits for this transaction and
    marks it after it, as it would after a refresh."""
    target = floor_minute(min(until or datetime.now(UTC), datetime.now(UTC)).astimezone(UTC))
    with engine.connect() as conn:
        if conn.execute(text("select pg_is_in_recovery()")).scalar():
            conn.rollback()
            return None
        if not conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": _ROLLUP_LOCK}).scalar():
            conn.rollback()
            return None
        conn.commit()
        try:
            with conn.begin():
                conn.execute(
                    text(
                        "select 1 from presence_rollup_state where name = 'concurrency' for update"
                    )
                )
                stored, first = conn.execute(
                    text("select count(*), min(occurred_at) from presence_transitions")
                ).one()
                listed = conn.execute(
                    text("select count(*) from presence_users where user_id = any(:u)"),
                    {"u": sorted(set(users))},
                ).scalar()
                if stored != transitions or listed != len(set(users)) or first is None:
                    conn.rollback()
                    return None
                lo = floor_minute(first)
                rows = minutes_of_sessions(sessions, epoch_us(lo), epoch_us(max(lo, target)))
                conn.execute(text("delete from presence_concurrency_minutes"))
                conn.execute(text("delete from presence_concurrency_quarters"))
                moment = _EPOCH.__add__
                storage.copy_rows(
                    conn,
                    "presence_concurrency_minutes",
                    ("minute", "peak", "user_seconds"),
                    (
                        (moment(timedelta(microseconds=m)), peak, us / 1_000_000)
                        for m, peak, us in rows
                    ),
                    ("timestamptz", "int4", "float8"),
                )
                if rows:
                    conn.execute(text(_QUARTERS_SQL), {"qlo": floor_quarter(lo), "hi": target})
                conn.execute(
                    text(
                        "update presence_rollup_state set valid_until = :v, dirty_from = null"
                        " where name = 'concurrency'"
                    ),
                    {"v": max(lo, target)},
                )
            return len(rows)
        finally:
            conn.execute(text("select pg_advisory_unlock(:k)"), {"k": _ROLLUP_LOCK})
            conn.commit()
