"""The summaries of users' complete histories, computed in Python for a bulk write.

The summaries kept on write (``presence_sessions``, ``presence_status_days``,
``presence_status_tails``: migrations 0005 and 0007, docs/analytics.md) are
normally kept by triggers on ``presence_transitions``. A history generated in one
go for users who have no rows yet is all appends, and its writer already holds
every row in order: cutting the segments at UTC quarter-hours here and copying
the results costs a fraction of the triggers' set-based SQL, which is what makes
a year of history affordable to generate.

:func:`write_history` writes the transitions with the triggers told to stand
aside for that one transaction (``presence.summaries = 'writer'``, a
transaction-local setting that migration 0008's trigger function honours) and
the summaries computed by :func:`summarise`, in the same transaction. The
figures are the triggers' own, exactly (tests/test_history.py compares them with
the recomputation tests/test_rollups.py uses); if the table refuses a row (a
month already pruned), the caller must write the normal way instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter

from sqlalchemy import Connection, text

from presence_core.database import storage

__all__ = ["Summaries", "summarise", "write_history"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_AT = itemgetter(2)
_EPOCH_DAY = date(1970, 1, 1)
_QUARTER = 900_000_000  # microseconds
_QUARTERS = 96  # in a UTC day

Summaries = tuple[list[tuple], list[tuple], list[tuple]]
"""(sessions rows, status-day rows, tail rows), in the tables' column order."""


def summarise(rows: Iterable[tuple]) -> Summaries:
    """The summaries of ``rows`` (transitions in :data:`storage.TRANSITION_COLUMNS`
    order, inserted in this order: a later row at the same instant has the higher
    id), for users with no other rows.

    Per user, ordered by ``(occurred_at, id)``: each instant's last status holds
    until the next instant; present segments are cut at UTC quarter-hours into
    cumulative microsecond arrays (``cum[k + 1]`` = time in ``[midnight, midnight
    + 15 k min)``; written as array text, which COPY reads faster than Python
    writes binary arrays); a present status after a non-present one opens a
    session, the next ``offline`` closes it (kept when longer than zero); the last
    row is the tail.
    """
    per_user: dict[str, list[tuple]] = {}
    for row in rows:
        items = per_user.get(row[0])
        if items is None:
            items = per_user[row[0]] = []
        items.append(row)
    sessions: list[tuple] = []
    days: list[tuple] = []
    tails: list[tuple] = []
    offline = storage.OFFLINE
    for user, items in per_user.items():
        items.sort(key=_AT)  # stable: rows at one instant stay in id order
        last = items[-1]
        tails.append((user, last[1], last[2]))
        spans: dict[str, list[tuple[int, int, int]]] = {}
        was, opened = False, None
        before_at = before_us = before_status = None
        for row in items:
            status, at = row[1], row[2]
            if at != before_at:
                us = (at - _EPOCH) // _MICROSECOND
                if before_status is not None and before_status != offline:
                    runs = spans.get(before_status)
                    if runs is None:
                        runs = spans[before_status] = []
                    _cut(runs, before_us, us)
                before_at, before_us = at, us
            before_status = status
            present = status != offline
            if present != was:
                if present:
                    opened = at
                elif at > opened:
                    sessions.append((user, opened, at))
                was = present
        if was:
            sessions.append((user, opened, None))
        cut: list[tuple[int, str, str]] = []
        for status, runs in spans.items():
            first = 0
            day = runs[0][0] // _QUARTERS
            for i, run in enumerate(runs):
                if run[0] // _QUARTERS != day:
                    _day_row(cut, day, status, runs[first:i])
                    first, day = i, run[0] // _QUARTERS
            _day_row(cut, day, status, runs[first:])
        cut.sort()
        days += [(user, _EPOCH_DAY + timedelta(days=day), status, cum) for day, status, cum in cut]
    return sessions, days, tails


def _cut(runs: list[tuple[int, int, int]], lo: int, hi: int) -> None:
    """Add ``[lo, hi)`` (microseconds since 1970) to a status's runs: ``(q, n,
    amount)`` is ``amount`` microseconds in each of quarter-hours ``q`` to ``q + n -
    1`` since 1970, never across a UTC midnight. A user's spans come in time order,
    so the runs do too (a quarter may get several, from spans that share it); whole
    quarters are one run, not one entry each."""
    q, last = lo // _QUARTER, (hi - 1) // _QUARTER
    if q == last:
        runs.append((q, 1, hi - lo))
        return
    runs.append((q, 1, (q + 1) * _QUARTER - lo))
    q += 1
    while q < last:  # the whole quarters between, one run per UTC day
        n = min(last, (q // _QUARTERS + 1) * _QUARTERS) - q
        runs.append((q, n, _QUARTER))
        q += n
    runs.append((last, 1, hi - last * _QUARTER))


def _day_row(out: list, day: int, status: str, runs: list[tuple[int, int, int]]) -> None:
    """(day, status, cum text) of one UTC day's runs, unless they add up to nothing."""
    cum = _cum_text(runs, day * _QUARTERS)
    if cum is not None:
        out.append((day, status, cum))


def _cum_text(runs: list[tuple[int, int, int]], base: int) -> str | None:
    """The day's 97 cumulative microseconds (``cum[j]`` = time in quarters before
    ``j``) as array text, from its runs in quarter order (quarter ``base`` is the
    day's first); None when they add up to
    nothing. Most of the 97 values repeat the one before (quarters with no time in
    the status): each repeat is written once and multiplied, which is what makes
    this cheaper than formatting 97 numbers."""
    pieces: list[str] = []
    total = 0
    done = 0  # cum[0 .. done - 1] are written; cum[done] is total so far
    for q, n, amount in runs:
        k = q - base
        if k >= done:
            pieces.append(f"{total}," * (k - done + 1))
        if n > 1:
            pieces.append(",".join(map(str, range(total + amount, total + amount * n, amount))))
            pieces.append(",")
        total += amount * n
        done = k + n
    if not total:
        return None
    pieces.append(f"{total}," * (_QUARTERS - done) + str(total))
    return "{" + "".join(pieces) + "}"


_LOCK_USERS = """
select pg_advisory_xact_lock(20563, h)
from (select distinct hashtext(u) as h from unnest(cast(:users as text[])) u order by 1) k
"""
_ANY_STORED = (
    "select exists(select 1 from presence_status_tails where user_id = any(cast(:users as text[])))"
)


def write_history(conn: Connection, rows: Sequence[tuple]) -> bool:
    """COPY ``rows`` (transitions of users who have none yet, in
    :data:`storage.TRANSITION_COLUMNS` order) and their summaries, on ``conn``'s
    transaction; the triggers skip this transaction's writes. Returns False, with
    nothing written, when one of the users has rows after all, or when the table
    did not take every row (a pruned month): the caller then writes them the
    normal way, which summarises what is taken."""
    users = sorted({row[0] for row in rows})
    # the triggers' per-user locks, then "no rows yet" checked again under them: a
    # listener may have written one of these users since the caller looked
    conn.execute(text(_LOCK_USERS), {"users": users})
    if conn.execute(text(_ANY_STORED), {"users": users}).scalar():
        return False
    with conn.begin_nested() as savepoint:
        conn.execute(text("select set_config('presence.summaries', 'writer', true)"))
        taken = storage.copy_rows(
            conn,
            "presence_transitions",
            storage.TRANSITION_COLUMNS,
            rows,
            storage.TRANSITION_TYPES,
        )
        if taken != len(rows):
            conn.execute(text("select set_config('presence.summaries', '', true)"))
            savepoint.rollback()
            return False
        sessions, days, tails = summarise(rows)
        storage.copy_rows(
            conn,
            "presence_sessions",
            ("user_id", "started_at", "ended_at"),
            sessions,
            ("text", "timestamptz", "timestamptz"),
        )
        storage.copy_rows(
            conn,
            "presence_status_days",
            ("user_id", "day", "status", "cum"),
            days,
        )
        storage.copy_rows(
            conn,
            "presence_status_tails",
            ("user_id", "status", "since"),
            tails,
            ("text", "text", "timestamptz"),
        )
        conn.execute(text("select set_config('presence.summaries', '', true)"))
    return True
