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
the summaries computed by :func:`summarise` (in
:mod:`presence_core.database.summarise`, which the listener's writer shares), in the
same transaction. The
figures are the triggers' own, exactly (tests/test_history.py compares them with
the recomputation tests/test_rollups.py uses); if the table refuses a row (a
month already pruned), the caller must write the normal way instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

from presence_core.database import appends, storage
from presence_core.database.summarise import Summaries, summarise

__all__ = ["Summaries", "summarise", "write_history"]


_LOCK_USERS = appends.LOCK_USERS.format(users="cast(:users as text[])")
_ANY_STORED = (
    "select exists(select 1 from presence_status_tails where user_id = any(cast(:users as text[])))"
)


def write_history(conn: Connection, rows: Sequence[tuple]) -> Summaries | None:
    """COPY ``rows`` (transitions of users who have none yet, in
    :data:`storage.TRANSITION_COLUMNS` order) and their summaries, on ``conn``'s
    transaction; the triggers skip this transaction's writes. Returns the summaries
    written, or None, with nothing written, when one of the users has rows after
    all, or when the table did not take every row (a pruned month): the caller then
    writes them the normal way, which summarises what is taken.

    The summaries are computed while the server stores the rows (``copy_rows``'
    ``meanwhile``). The users' locks are taken after the COPY, as the triggers take
    them: locking first could deadlock with a trigger that holds the rollups' state
    row (taken by the COPY's invalidation trigger) and waits for one of them."""
    users = sorted({row[0] for row in rows})
    with conn.begin_nested() as savepoint:
        conn.execute(text("select set_config('presence.summaries', 'writer', true)"))
        computed: list[Summaries] = []
        taken = storage.copy_rows(
            conn,
            "presence_transitions",
            storage.TRANSITION_COLUMNS,
            rows,
            storage.TRANSITION_TYPES,
            meanwhile=lambda: computed.append(summarise(rows)),
        )
        fresh = False
        if taken == len(rows):
            # the triggers' per-user locks, then "no rows yet" checked under them: a
            # listener may have written one of these users since the caller looked (the
            # tails are not ours: this transaction's rows are not summarised yet)
            conn.execute(text(_LOCK_USERS), {"users": users})
            fresh = not conn.execute(text(_ANY_STORED), {"users": users}).scalar()
        if not fresh:
            savepoint.rollback()  # the setting goes with it
            return None
        sessions, days, tails = computed[0]
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
    return computed[0]
