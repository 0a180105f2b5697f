"""Who was listening when: coverage intervals (``presence_coverage``) and each
listener's heartbeat row (``presence_listeners``).

Analytics tells "offline" from "not observed" by the coverage intervals, so a
listener opens one on every connect and closes it when it loses sight of the
server. A listener that is killed cannot close its interval; the next run of the
same name closes it at the last heartbeat, the moment up to which everything it
received was durable (:func:`close_dangling_coverage`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from presence_core.database import tables

log = logging.getLogger("presence.listener")

__all__ = ["CoverageMark", "Heartbeat", "close_dangling_coverage", "write_heartbeat", "write_mark"]


@dataclass(frozen=True)
class CoverageMark:
    """The opening (``ended_at`` None) or the closing of a coverage interval."""

    listener: str
    started_at: datetime
    ended_at: datetime | None = None


def write_mark(conn: Connection, mark: CoverageMark) -> None:
    """Open or close a coverage interval on the caller's transaction; idempotent and
    order-independent (a closing replayed before its opening still ends up closed)."""
    cov = tables.coverage
    key = and_(cov.c.listener == mark.listener, cov.c.started_at == mark.started_at)
    if mark.ended_at is not None:
        done = conn.execute(update(cov).where(key).values(ended_at=mark.ended_at)).rowcount
        if done:
            return
    exists = conn.execute(select(cov.c.id).where(key).limit(1)).first()
    if exists is None:
        conn.execute(
            cov.insert().values(
                listener=mark.listener, started_at=mark.started_at, ended_at=mark.ended_at
            )
        )


def close_dangling_coverage(engine: Engine, listener: str, now: datetime) -> datetime | None:
    """Close the intervals a killed listener of this name left open, at its last
    heartbeat (the moment up to which everything it received was durable), and
    return the end of its latest interval: the start of the gap to reconcile.
    None when this listener has never run."""
    cov, hb = tables.coverage, tables.listeners
    with engine.begin() as conn:
        heartbeat = conn.execute(
            select(hb.c.heartbeat_at).where(hb.c.listener == listener)
        ).scalar_one_or_none()
        dangling = conn.execute(
            select(cov.c.id, cov.c.started_at).where(
                cov.c.listener == listener, cov.c.ended_at.is_(None)
            )
        ).all()
        for row in dangling:
            end = row.started_at
            if heartbeat is not None and heartbeat > end:
                end = min(heartbeat, now)
            conn.execute(update(cov).where(cov.c.id == row.id).values(ended_at=end))
            log.info(
                "event=coverage_closed_after_crash listener=%s started_at=%s ended_at=%s",
                listener,
                row.started_at.isoformat(),
                end.isoformat(),
            )
        return conn.execute(
            select(func.max(cov.c.ended_at)).where(cov.c.listener == listener)
        ).scalar_one_or_none()


@dataclass(frozen=True)
class Heartbeat:
    """A listener's row in ``presence_listeners`` (what the Health page shows)."""

    listener: str
    server_url: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    connected: bool
    last_event_at: datetime | None
    events_received: int
    transitions_written: int
    stopped_at: datetime | None = None


def write_heartbeat(engine: Engine, beat: Heartbeat) -> None:
    """Upsert the listener's heartbeat row."""
    values = {name: getattr(beat, name) for name in beat.__dataclass_fields__}
    stmt = pg_insert(tables.listeners).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[tables.listeners.c.listener],
        set_={k: stmt.excluded[k] for k in values if k != "listener"},
    )
    with engine.begin() as conn:
        conn.execute(stmt)
