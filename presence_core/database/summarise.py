"""The summaries kept on write, computed in Python from rows a writer holds in order.

The summaries (``presence_sessions``, ``presence_status_days``,
``presence_status_tails``: migrations 0005 and 0007, docs/analytics.md) are kept by
triggers on ``presence_transitions`` whatever writes. Two writers already hold the
rows they write, in order, and the segments before them: the history generator
(users with no rows yet: :func:`summarise`) and the listener's and server's writer
when every user of a batch only appends after its stored tail (the usual batch:
:func:`summarise_appends`, used by :mod:`presence_core.database.appends`). For them,
cutting the segments at UTC quarter-hours here costs a fraction of the triggers'
set-based SQL. Both functions walk each user's rows with the same code (one
definition of the segments, sessions and tails), and the tests compare them with
the triggers' tables and the brute-force recomputation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

from presence_core.protocol import OFFLINE

__all__ = ["Appended", "Summaries", "summarise", "summarise_appends"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_AT = itemgetter(2)
_EPOCH_DAY = date(1970, 1, 1)
_QUARTER = 900_000_000  # microseconds
_QUARTERS = 96  # in a UTC day

Summaries = tuple[list[tuple], list[tuple], list[tuple]]
"""(sessions rows, status-day rows, tail rows), in the tables' column order."""


class Appended(NamedTuple):
    """What a batch of appends changes in the summaries (:func:`summarise_appends`)."""

    closes: list[tuple]
    """(user_id, ended_at): the user's open session ends there."""
    sessions: list[tuple]
    """(user_id, started_at, ended_at or None): new sessions."""
    days: list[tuple]
    """(user_id, day, status, cum array text): new status-day rows."""
    day_suffixes: list[tuple]
    """(user_id, day, status, lo, head array text, total, n): stored rows whose
    elements from ``lo`` (1-based) on become the head's then ``n`` times the total
    (the stored total plus the new time; the head is where it changes)."""
    tails: list[tuple]
    """(user_id, status, since): every user's new tail."""


@lru_cache(maxsize=4096)
def _date(day: int) -> date:
    """The date ``day`` days after 1970-01-01 (a batch has one or two: cached)."""
    return _EPOCH_DAY + timedelta(days=day)


def _by_user(rows: Iterable[tuple]) -> dict[str, list[tuple]]:
    per_user: dict[str, list[tuple]] = {}
    for row in rows:
        items = per_user.get(row[0])
        if items is None:
            items = per_user[row[0]] = []
        items.append(row)
    return per_user


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
    sessions: list[tuple] = []
    days: list[tuple] = []
    tails: list[tuple] = []
    for user, items in _by_user(rows).items():
        spans = _walk(user, items, None, sessions, sessions)
        last = items[-1]
        tails.append((user, last[1], last[2]))
        cut: list[tuple[int, str, str]] = []
        for status, runs in spans.items():
            for day, day_runs in _days(runs):
                cum = _cum_text(day_runs, day * _QUARTERS)
                if cum is not None:
                    cut.append((day, status, cum))
        cut.sort()
        days += [(user, _date(day), status, cum) for day, status, cum in cut]
    return sessions, days, tails


def summarise_appends(
    rows: Iterable[tuple],
    tails: Mapping[str, tuple[str, datetime]],
    totals: Mapping[tuple[str, str], int],
) -> Appended:
    """What ``rows`` (as for :func:`summarise`) change when every user's rows come
    after its stored tail (``tails``: user -> (status, since); a user without one
    has no rows) and ``totals`` are the stored arrays' last elements on the tail's
    UTC day ((user, status) -> microseconds).

    The segment before the new rows is the tail's; nothing stored after it changes.
    A present tail's open session is closed by the first ``offline`` (``closes``).
    Every stored array ends before the tail, so on the tail's day (quarter ``q``)
    elements up to ``q + 1`` stay and each one after is the stored total plus the
    new time: only that suffix is written, with no need to read the arrays.
    """
    appended = Appended([], [], [], [], [])
    for user, items in _by_user(rows).items():
        start = tails.get(user)
        spans = _walk(user, items, start, appended.sessions, appended.closes)
        last = items[-1]
        appended.tails.append((user, last[1], last[2]))
        tail_day = quarter = -1
        if start is not None:
            q = (start[1] - _EPOCH) // _MICROSECOND // _QUARTER
            tail_day, quarter = q // _QUARTERS, q % _QUARTERS
        for status, runs in spans.items():
            for day, day_runs in _days(runs):
                total = totals.get((user, status)) if day == tail_day else None
                if total is None:
                    cum = _cum_text(day_runs, day * _QUARTERS)
                    if cum is not None:
                        appended.days.append((user, _date(day), status, cum))
                    continue
                head, done, grown = _cum_head(day_runs, day * _QUARTERS, total)
                if grown != total:
                    # the head starts with quarter + 1 copies of the total (the first new
                    # time is in the tail's quarter or later): elements up to there stay
                    keep = (quarter + 1) * (len(str(total)) + 1)
                    appended.day_suffixes.append(
                        (
                            user,
                            _date(day),
                            status,
                            quarter + 2,
                            "{" + head[keep:-1] + "}",
                            grown,
                            _QUARTERS + 1 - done,
                        )
                    )
    return appended


def _walk(
    user: str,
    items: list[tuple],
    start: tuple[str, datetime] | None,
    sessions: list[tuple],
    closes: list[tuple],
) -> dict[str, list[tuple[int, int, int]]]:
    """One user's rows (sorted here, stably) after ``start`` (the stored tail's
    status and time, or None for a user with no rows): the present time per status
    as quarter-hour runs (:func:`_cut`); sessions opened by the rows are appended
    to ``sessions``, and (user, at) to ``closes`` where a row closes the session
    already open at ``start``."""
    items.sort(key=_AT)  # stable: rows at one instant stay in id order
    spans: dict[str, list[tuple[int, int, int]]] = {}
    offline = OFFLINE
    if start is None:
        was, opened = False, None
        before_at = before_us = before_status = None
    else:
        before_status, before_at = start
        before_us = (before_at - _EPOCH) // _MICROSECOND
        was, opened = before_status != offline, None  # None: the stored open session
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
            elif opened is None:
                closes.append((user, at))  # after the stored tail: never of zero length
            elif at > opened:
                sessions.append((user, opened, at))
            was = present
    if was and opened is not None:
        sessions.append((user, opened, None))
    return spans


def _days(runs: list[tuple[int, int, int]]) -> Iterable[tuple[int, list[tuple[int, int, int]]]]:
    """A status's runs (in time order, none across a UTC midnight) grouped by day."""
    first = 0
    day = runs[0][0] // _QUARTERS
    if runs[-1][0] // _QUARTERS == day:  # the usual batch: one day
        yield day, runs
        return
    for i, run in enumerate(runs):
        if run[0] // _QUARTERS != day:
            yield day, runs[first:i]
            first, day = i, run[0] // _QUARTERS
    yield day, runs[first:]


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


def _cum_text(runs: list[tuple[int, int, int]], base: int) -> str | None:
    """The day's 97 cumulative microseconds (``cum[j]`` = time in quarters before
    ``j``) as array text, from its runs in quarter order (quarter ``base`` is the
    day's first); None when they add up to nothing."""
    head, done, total = _cum_head(runs, base, 0)
    if not total:
        return None
    return "{" + head + f"{total}," * (_QUARTERS - done) + str(total) + "}"


def _cum_head(runs: list[tuple[int, int, int]], base: int, start: int) -> tuple[str, int, int]:
    """``(text, done, total)``: ``cum[0 .. done - 1]`` of the day's runs (in quarter
    order; quarter ``base`` is the day's first) plus ``start``, each value followed by
    a comma, and ``total``, the value of every element from ``done`` on. Most of the
    97 values repeat the one before (quarters with no time in the status): each
    repeat is written once and multiplied, which is what makes this cheaper than
    formatting 97 numbers."""
    pieces: list[str] = []
    total = start
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
    return "".join(pieces), done, total
