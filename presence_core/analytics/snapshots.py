"""Reads split over several connections that see one snapshot.

PostgreSQL runs a statement over the user-by-user reads of this package (a
lateral per user, a probe per user) on one core; the machines we aim at have two.
So a read is cut into parts (stretches of days, ranges of users) and the parts
run at once on connections that import the first one's snapshot
(``pg_export_snapshot``, ``SET TRANSACTION SNAPSHOT``): the figures are those of
one transaction, in less time. Used by the daily active users, the flapping
users, the per-user days and availability. On a read replica a snapshot cannot be
exported; callers read their parts in turn there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, text

from presence_core.analytics.common import fetch_rows

__all__ = ["fetch_in_snapshot", "in_snapshot", "run_all"]

_NO_GATHER = "set local max_parallel_workers_per_gather = 0"

_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


def run_all(
    engine: Engine | None,
    conn: Connection,
    sql: TextClause,
    stretches: list[dict],
    workers: int,
) -> list[list]:
    """``sql``'s rows for each parameter set of ``stretches``, all from ``conn``'s
    snapshot: some on ``conn``, the others at once on up to ``workers`` - 1 more
    connections of ``engine`` that import that snapshot (without ``engine``, or for
    one stretch, all on ``conn``). ``conn``'s transaction stays open until every one
    has finished, as an imported snapshot must still be held by its exporter when
    it is imported."""
    if engine is None or len(stretches) < 2 or workers < 2:
        return [conn.execute(sql, p).all() for p in stretches]
    snapshot = conn.execute(text("select pg_export_snapshot()")).scalar()
    # the connections already use the cores: a Gather's workers would only contend
    # (two ragged days at 20,000 users: best 216 ms without them, 283 ms with, load 8)
    conn.exec_driver_sql(_NO_GATHER)

    def more(params: list[dict]) -> list[list]:
        with in_snapshot(engine, snapshot) as other:
            other.exec_driver_sql(_NO_GATHER)
            return [other.execute(sql, p).all() for p in params]

    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        shares = [stretches[k::workers] for k in range(1, workers)]
        futures = [pool.submit(more, share) for share in shares if share]
        mine = [conn.execute(sql, p).all() for p in stretches[::workers]]
        theirs = [f.result() for f in futures]
    return mine + [rows for share in theirs for rows in share]


@contextmanager
def in_snapshot(engine: Engine, snapshot: str) -> Iterator[Connection]:
    """A connection of ``engine`` in a read-only repeatable-read transaction seeing
    exactly what the exporter of ``snapshot`` (``pg_export_snapshot()``) sees."""
    if not _SNAPSHOT_ID.match(snapshot):  # (SET TRANSACTION SNAPSHOT takes no parameter)
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    with engine.connect() as conn:
        conn.execute(text("set transaction isolation level repeatable read, read only"))
        conn.exec_driver_sql(f"set transaction snapshot '{snapshot}'")
        conn.exec_driver_sql("set local work_mem = '64MB'")
        try:
            yield conn
        finally:
            conn.rollback()


def fetch_in_snapshot(engine: Engine, snapshot: str, sql: str, params: dict[str, Any]) -> list:
    """``sql``'s rows (tuples) read on a connection of ``engine`` in ``snapshot``."""
    with in_snapshot(engine, snapshot) as conn:
        return fetch_rows(conn, sql, params)[1]
