"""The listener's and the server's usual batch, summarised by the writer itself.

A batch from the listener or the server almost always only appends: every user's
new rows come after the user's stored tail. Then the summaries change in a known
way (the tail's segment ends at the first new row, the open session may close, new
segments and sessions follow), which the triggers' append path (migration 0007)
computes in SQL over the statement's transition table: most of the write's cost
(docs/analytics.md, "What it costs on write"). :func:`write_appends` computes it in
Python instead (:func:`presence_core.database.summarise.summarise_appends`, the
generator's walk of the rows) and writes the results in one statement, in the same
transaction, with the summaries' trigger told to stand aside for it
(``presence.summaries = 'writer'``, migration 0008), as the history generator does.
The rollups' and day caches' invalidation is another trigger, which still runs.

Order of work, and why:

1. Read the users' tails (and their arrays' totals on the tail's day). If a user's
   first new row is not after its tail (a late or out-of-order row, an equal
   instant, a replay), return None at once: the caller writes the batch the normal
   way and the triggers' general path summarises it.
2. COPY the rows, inside a savepoint, and compute the summaries while the server
   stores them (``copy_rows``' ``meanwhile``). A duplicate (a replay, or the server
   and the listener logging one event) fails the COPY and the caller takes the
   staging path.
3. Then take the triggers' per-user advisory locks (same keys, same order) and read
   the tails again in a new statement: any writer of these users that committed
   meanwhile is seen, and none can write them until we commit. If they changed, the
   summaries are computed again (or the batch left to the triggers). The locks come
   after the COPY, as in the triggers: taken before it, they could deadlock with a
   trigger that holds the rollups' state row (taken by its COPY's invalidation
   trigger) or an identical row of ours, and waits for one of our users.

Nothing is written unless all of it is (one transaction), so a crash mid-batch
loses nothing and leaves nothing half-summarised.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from psycopg.errors import UniqueViolation
from sqlalchemy import Connection

from presence_core.database.storage import TRANSITION_COLUMNS, TRANSITION_TYPES, copy_rows
from presence_core.database.summarise import summarise_appends

__all__ = ["DUPLICATES", "write_appends"]

DUPLICATES: Final = "duplicates"
"""What :func:`write_appends` returns when a row of the batch is already stored."""

MIN_ROWS = 1000
"""Smaller batches are left to the triggers: this path costs two more statements and
a Python walk per user, which the triggers' SQL only repays on big batches (CPU per
batch, one row per user, load 5-8: 1 row 2.8-3.2 ms against 1.7-2.1; 100 rows
9.9-11.4 against 8.1-9.9; 1,000 rows 52-76 against 53-71; 5,000 rows, five per
user, 81-103 against 99-136)."""

LOCK_USERS = """
select pg_advisory_xact_lock(20563, h)
from (select distinct hashtext(u) as h from unnest({users}) u order by 1) k
"""
"""The triggers' per-user lock keys (migration 0005), taken in the same global order;
``{users}`` is the SQL of the users' text array (each driver binds it its own way)."""
_LOCK = LOCK_USERS.format(users="%b::text[]")

# each user's tail, and the totals of its stored arrays on the tail's UTC day, as one
# row of arrays; the setting that makes the summaries' trigger stand aside rides along
# (an aggregate's one row: evaluated once, before the COPY that needs it)
_READ = """
select set_config('presence.summaries', 'writer', true),
       array_agg(t.user_id), array_agg(t.status), array_agg(t.since),
       array_agg(d.status), array_agg(d.cum[97])
from presence_status_tails t
left join presence_status_days d
  on d.user_id = t.user_id and d.day = (t.since at time zone 'UTC')::date
where t.user_id = any(%b::text[])
"""

# One statement: its parts touch disjoint rows (moved tails exist, new ones do not; a
# closed session is an old one, the new ones start after the tail; grown arrays exist,
# added ones do not; an update is a little cheaper than an upsert), and the
# setting is cleared in it so that nothing later in the transaction is skipped.
_WRITE = """
with moved as (
    update presence_status_tails t set status = x.status, since = x.since
    from unnest(%(tail_user)b::text[], %(tail_status)b::text[],
                %(tail_since)b::timestamptz[]) x(user_id, status, since)
    where t.user_id = x.user_id
),
tails as (
    insert into presence_status_tails (user_id, status, since)
    select * from unnest(%(new_user)b::text[], %(new_status)b::text[],
                         %(new_since)b::timestamptz[])
),
closed as (
    update presence_sessions s set ended_at = c.ended_at
    from unnest(%(close_user)b::text[], %(close_at)b::timestamptz[]) c(user_id, ended_at)
    where s.user_id = c.user_id and s.ended_at is null
),
opened as (
    insert into presence_sessions (user_id, started_at, ended_at)
    select * from unnest(%(session_user)b::text[], %(session_start)b::timestamptz[],
                         %(session_end)b::timestamptz[])
),
grown as (
    update presence_status_days d
    set cum[x.lo:97] = x.head::bigint[] || array_fill(x.total, array[x.n])
    from unnest(%(grow_user)b::text[], %(grow_day)b::date[], %(grow_status)b::text[],
                %(grow_lo)b::int[], %(grow_head)b::text[], %(grow_total)b::bigint[],
                %(grow_n)b::int[]) x(user_id, day, status, lo, head, total, n)
    where d.user_id = x.user_id and d.day = x.day and d.status = x.status
),
added as (
    insert into presence_status_days (user_id, day, status, cum)
    select user_id, day, status, cum::bigint[]
    from unnest(%(day_user)b::text[], %(day_day)b::date[], %(day_status)b::text[],
                %(day_cum)b::text[]) x(user_id, day, status, cum)
)
select set_config('presence.summaries', '', true)
"""


def write_appends(conn: Connection, rows: Sequence[tuple]) -> int | str | None:
    """COPY ``rows`` (:data:`storage.TRANSITION_COLUMNS` order) and, when every
    user's rows come after its stored tail, write their summaries on ``conn``'s
    transaction; returns how many rows were stored. Returns :data:`DUPLICATES`
    when a row is already there (or twice in the batch), None when the batch is not
    all appends, has fewer than :data:`MIN_ROWS` rows, or the table did not take
    every row (a pruned month): in these cases nothing was written and the caller
    writes the batch the normal way.

    The summaries are computed while the server stores the rows, from the tails
    read before the COPY; under the locks the tails are read again, and if another
    writer changed them in between, computed again from what they are now.
    """
    if len(rows) < MIN_ROWS:
        return None
    first: dict[str, datetime] = {}
    for row in rows:
        user, at = row[0], row[2]
        if type(user) is not str or not isinstance(at, datetime) or at.tzinfo is None:
            return None  # refused by the normal path's COPY, with its message
        known = first.get(user)
        if known is None or at < known:
            first[user] = at
    users = list(first)
    raw = conn.connection.driver_connection
    try:
        with conn.begin_nested() as savepoint, raw.cursor() as cursor:
            seen = _read(cursor, users)  # and the setting
            if not _appends(first, seen[0]):
                savepoint.rollback()  # the setting goes with it
                return None
            params: list = []
            taken = copy_rows(
                conn,
                "presence_transitions",
                TRANSITION_COLUMNS,
                rows,
                TRANSITION_TYPES,
                meanwhile=lambda: params.append(_parameters(rows, *seen)),
            )
            if taken == len(rows):
                cursor.execute(_LOCK, (sorted(users),), binary=True)
                now = _read(cursor, users)
                if now != seen:  # another writer of these users committed since
                    params[0] = _parameters(rows, *now) if _appends(first, now[0]) else None
            if taken != len(rows) or params[0] is None:
                savepoint.rollback()
                return None
            cursor.execute(_WRITE, params[0], binary=True)
    except UniqueViolation:
        return DUPLICATES
    return taken


def _read(cursor, users: list[str]) -> tuple[dict, dict]:
    """The users' tails (user -> (status, since)) and the totals of their stored
    arrays on the tail's UTC day ((user, status) -> microseconds)."""
    tails: dict = {}
    totals: dict = {}
    cursor.execute(_READ, (users,), binary=True)
    _setting, *columns = cursor.fetchone()
    if columns[0] is not None:  # some user has a tail
        for user, status, since, day_status, total in zip(*columns, strict=True):
            tails[user] = (status, since)
            if day_status is not None:
                totals[(user, day_status)] = total
    return tails, totals


def _appends(first: dict[str, datetime], tails: dict) -> bool:
    """Whether every user's first new row comes after its tail."""
    return all(since < first[user] for user, (_status, since) in tails.items())


def _parameters(rows: Sequence[tuple], tails: dict, totals: dict) -> dict:
    """The parameters of :data:`_WRITE` for ``rows`` appended after ``tails``."""
    new = summarise_appends(rows, tails, totals)
    moved = [tail for tail in new.tails if tail[0] in tails]
    first = [tail for tail in new.tails if tail[0] not in tails]
    return {
        **_columns(moved, "tail_user", "tail_status", "tail_since"),
        **_columns(first, "new_user", "new_status", "new_since"),
        **_columns(new.closes, "close_user", "close_at"),
        **_columns(new.sessions, "session_user", "session_start", "session_end"),
        **_columns(
            new.day_suffixes,
            *("grow_user", "grow_day", "grow_status", "grow_lo", "grow_head", "grow_total"),
            "grow_n",
        ),
        **_columns(new.days, "day_user", "day_day", "day_status", "day_cum"),
    }


def _columns(items: list[tuple], *names: str) -> dict[str, list]:
    """Rows as one list per column (the statement unnests them side by side)."""
    if not items:
        return {name: [] for name in names}
    return dict(zip(names, map(list, zip(*items, strict=True)), strict=True))
