"""Caches of whole past days, kept exact: the protocol the caches share.

Three caches hold figures of whole past days computed on read: the daily active
users (migration 0009, :mod:`presence_core.analytics.daily_active`), each user's
daily figures (migration 0011, :mod:`presence_core.analytics.user_days`), both per
local day of a zone, and the users who flap on each UTC day (migration 0013,
:mod:`presence_core.analytics.flapping`). A day's figures depend only on the
statuses in force (or the transitions) up to its end (``day_end``: for flapping,
the UTC day's end plus the window), and the status at an instant is the last
transition at or before it; so a write whose earliest ``occurred_at`` is ``m``
changes no day ending at or before ``m``. The trigger of 0009 lowers the
``dirty_from`` of the ``daily_active`` state row (:data:`MARK`) to that ``m`` (a
truncate sets it to ``-infinity``; a user added to or removed from presence_users
with rows stored marks from its first row). All caches answer to that one mark:
the same writes change them from the same instant, so one row and one trigger
serve them, and the writers' cost did not grow with the later caches.

The protocol:

- :func:`invalidate` (before reading): delete the cached days ending after the
  mark from every cache (a table not created yet, before its migration, is
  skipped), then clear the mark; skipped while a reader holds
  :data:`LOCK` shared (between its snapshot and its insert, it relies on the mark).
- :func:`reading` holds :data:`LOCK` shared from before a reader's snapshot to its
  insert, so the mark is not cleared meanwhile: at insert time it is at or before
  the earliest instant touched by any write committed since the snapshot.
- The insert keeps only the days ending at or before the mark as read then
  (``for share``: that waits for a writer that has marked and not committed; a
  writer still to come marks after the insert, and the next read deletes what it
  changed). A steady stream of writes near now (the listener's) never stops past
  days from being kept.
- On a replica nothing is written; readers skip the days after the mark.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

LOCK = 0x50524441
"""Advisory lock: readers between snapshot and insert (shared) vs clearing the mark."""

MARK = "daily_active"
"""The state row (presence_rollup_state) whose dirty_from both caches answer to."""

MAX_RUNS = 4
"""Uncached stretches computed one by one; more are computed as one span (still exact)."""

# (a truncate's -infinity read as year 1: Python has no infinite datetime)
STATE = (
    "select case when dirty_from = '-infinity' then timestamptz '0001-01-02 00:00:00+00'"
    f" else dirty_from end from presence_rollup_state where name = '{MARK}'"
)

# the mark as SQL sees it: days ending at or before it are valid
MARK_SQL = (
    "coalesce((select dirty_from from presence_rollup_state"
    f" where name = '{MARK}'), 'infinity'::timestamptz)"
)

# Deleting the days ending after :d, from every cache. The per-user cache's days are
# found through its cover table (small), then its rows by primary key.
_DELETES = (
    ("presence_daily_active", "delete from presence_daily_active where day_end > :d"),
    (
        "presence_user_days",
        """with gone as (delete from presence_user_days_cover where day_end > :d returning tz, day)
    delete from presence_user_days u using gone g where u.tz = g.tz and u.day = g.day""",
    ),
    # (a day's flapping users depend on the log up to its end plus the window: day_end)
    ("presence_flapping_days", "delete from presence_flapping_days where day_end > :d"),
)


def invalidate(conn: Connection) -> None:
    """Delete the cached days a write has touched since the last read, from both
    caches, and clear the mark (on the primary; a replica cannot write, and its
    readers skip the marked days instead). Skipped while another reader is between
    its snapshot and its insert (it holds :data:`LOCK` shared): that reader's
    insert relies on the mark. Leaves ``conn`` outside any transaction."""
    dirty = conn.execute(text(STATE)).scalar()
    replica = dirty is not None and conn.execute(text("select pg_is_in_recovery()")).scalar()
    conn.rollback()
    if dirty is None or replica:
        return
    with conn.begin():
        if not conn.execute(text("select pg_try_advisory_xact_lock(:k)"), {"k": LOCK}).scalar():
            return
        dirty = conn.execute(text(STATE + " for update")).scalar()
        if dirty is not None:
            for table, delete in _DELETES:
                # (a database migrated only to 0009, as the migration tests leave it)
                if conn.execute(text("select to_regclass(:t)"), {"t": table}).scalar():
                    conn.execute(text(delete), {"d": dirty})
            conn.execute(
                text(f"update presence_rollup_state set dirty_from = null where name = '{MARK}'")
            )


@contextmanager
def reading(conn: Connection) -> Iterator[bool]:
    """Invalidate, then hold :data:`LOCK` shared (on the primary) until the block
    ends: take the snapshot and insert inside it. Yields whether this is the
    primary (a replica's reader computes and keeps nothing)."""
    invalidate(conn)
    primary = not conn.execute(text("select pg_is_in_recovery()")).scalar()
    if primary:  # no mark is cleared until this read has kept what it computed
        conn.execute(text("select pg_advisory_lock_shared(:k)"), {"k": LOCK})
    conn.commit()
    try:
        yield primary
    finally:
        if primary:
            conn.rollback()
            conn.execute(text("select pg_advisory_unlock_shared(:k)"), {"k": LOCK})
            conn.commit()


def runs(missing: list[int]) -> list[tuple[int, int]]:
    """Contiguous stretches (first, last index) of ``missing`` (sorted), at most
    :data:`MAX_RUNS` of them (beyond that, one stretch from the first to the last)."""
    out: list[tuple[int, int]] = []
    for i in missing:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    if len(out) > MAX_RUNS:
        return [(out[0][0], out[-1][1])]
    return out
