"""Is the pipeline healthy? The queries behind the dashboard's Health page.

Each function takes an engine and answers one question: are the listeners alive
(their heartbeat in ``presence_listeners``), how old is the last event, how many
transitions arrived per minute lately, how many rows the tables hold, how big
the database is, and, when the dashboard reads from a streaming replica
(``PRESENCE_READ_DATABASE_URL``), how far that replica is behind its primary.
:func:`report` gathers them all in one :class:`HealthReport`.
Times are timezone-aware UTC, measured by the database's clock so that a skewed
dashboard host does not make a listener look dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

from presence_core.config import Settings
from presence_core.database.engine import replica_status

# A listener whose heartbeat is older than this is reported dead.
STALE_AFTER = timedelta(seconds=30)
# Above this many rows (by the planner's estimate) a table is not counted exactly.
EXACT_COUNT_LIMIT = 1_000_000

TABLES = ("presence_users", "presence_transitions", "presence_coverage", "presence_listeners")


@dataclass(frozen=True)
class ListenerHealth:
    """One listener process as its heartbeat row describes it.

    ``alive`` is true when it has not stopped and its heartbeat is younger than
    :data:`STALE_AFTER`; ``heartbeat_age`` is measured by the database's clock.
    """

    listener: str
    server_url: str | None
    host: str | None
    pid: int | None
    started_at: datetime
    heartbeat_at: datetime
    connected: bool
    last_event_at: datetime | None
    events_received: int
    transitions_written: int
    stopped_at: datetime | None
    heartbeat_age: timedelta
    alive: bool


@dataclass(frozen=True)
class TableCount:
    """Rows in a table; ``exact`` is false where the planner's estimate was used."""

    table: str
    rows: int
    exact: bool


@dataclass(frozen=True)
class HealthReport:
    """Everything the Health page shows, read at ``checked_at`` (the database's now)."""

    checked_at: datetime
    listeners: list[ListenerHealth]
    last_event_at: datetime | None
    last_event_age: timedelta | None
    events_per_minute: list[tuple[datetime, int]]
    tables: list[TableCount]
    database_bytes: int
    database_url: str
    server_url: str
    embedded: bool
    # how far the replica the report was read from is behind its primary; None when
    # it was read from the primary itself (no replica configured)
    replica_lag: timedelta | None = None
    # whether that replica is receiving from its primary (None: read from the primary)
    replica_streaming: bool | None = None

    @property
    def on_replica(self) -> bool:
        """Whether the report was read from a streaming replica."""
        return self.replica_lag is not None

    @property
    def listener_alive(self) -> bool:
        """Whether at least one listener is alive."""
        return any(item.alive for item in self.listeners)

    @property
    def alive_since(self) -> datetime | None:
        """When the longest-running live listener started (None when none is alive)."""
        starts = [item.started_at for item in self.listeners if item.alive]
        return min(starts) if starts else None


_LISTENERS = """
select listener, server_url, host, pid, started_at, heartbeat_at, connected, last_event_at,
       events_received, transitions_written, stopped_at,
       now() - heartbeat_at as heartbeat_age
from presence_listeners
order by stopped_at is not null, heartbeat_at desc, listener
"""


def listeners(engine: Engine, stale_after: timedelta = STALE_AFTER) -> list[ListenerHealth]:
    """Every listener that ever wrote a heartbeat, live ones first."""
    with engine.connect() as conn:
        rows = conn.execute(text(_LISTENERS)).all()
    result = []
    for row in rows:
        age = max(row.heartbeat_age, timedelta(0))
        result.append(
            ListenerHealth(
                listener=row.listener,
                server_url=row.server_url,
                host=row.host,
                pid=row.pid,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                connected=row.connected,
                last_event_at=row.last_event_at,
                events_received=row.events_received,
                transitions_written=row.transitions_written,
                stopped_at=row.stopped_at,
                heartbeat_age=age,
                alive=row.stopped_at is None and age < stale_after,
            )
        )
    return result


_LAST_EVENT = """
select greatest(
           (select max(last_event_at) from presence_listeners),
           (select max(occurred_at) from presence_transitions where occurred_at <= now())
       ) as last_event_at,
       now() as now
"""


def last_event(engine: Engine) -> tuple[datetime | None, timedelta | None]:
    """The newest event any listener received (or the newest transition, if later) and
    its age; ``(None, None)`` when nothing was ever received."""
    with engine.connect() as conn:
        row = conn.execute(text(_LAST_EVENT)).one()
    if row.last_event_at is None:
        return None, None
    return row.last_event_at, max(row.now - row.last_event_at, timedelta(0))


# Counted by received_at; the occurred_at bound lets the index narrow the scan (a
# transition received in the window but that occurred over LOOKBACK earlier, such
# as a long-spooled replay, is not counted).
_PER_MINUTE = """
with bounds as (
    select date_trunc('minute', now()) - make_interval(mins => :minutes - 1) as lo,
           date_trunc('minute', now()) as hi
),
counted as (
    select date_trunc('minute', t.received_at) as minute, count(*)::int as events
    from presence_transitions t, bounds b
    where t.occurred_at >= b.lo - cast(:lookback as interval)
      and t.received_at >= b.lo
    group by 1
)
select m.minute, coalesce(c.events, 0) as events
from bounds b
cross join lateral generate_series(b.lo, b.hi, interval '1 minute') as m(minute)
left join counted c on c.minute = m.minute
order by m.minute
"""

LOOKBACK = timedelta(hours=1)


def events_per_minute(engine: Engine, minutes: int = 60) -> list[tuple[datetime, int]]:
    """Transitions written per minute (by ``received_at``) over the last ``minutes``
    minutes, oldest first, the current minute last; minutes without any count 0.
    Only transitions that occurred at most an hour before the window are looked at."""
    if minutes < 1:
        raise ValueError("minutes must be at least 1")
    with engine.connect() as conn:
        rows = conn.execute(text(_PER_MINUTE), {"minutes": minutes, "lookback": LOOKBACK}).all()
    return [(row.minute, row.events) for row in rows]


_ESTIMATES = """
select c.relname as table, greatest(c.reltuples, 0)::bigint as estimate
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = current_schema() and c.relname = any(:tables)
"""


def table_counts(engine: Engine, limit: int = EXACT_COUNT_LIMIT) -> list[TableCount]:
    """Rows in each of the product's tables: exact below ``limit`` rows (by the
    planner's estimate), else the estimate, so a huge history never stalls the page."""
    with engine.connect() as conn:
        estimates = {
            row.table: row.estimate
            for row in conn.execute(text(_ESTIMATES), {"tables": list(TABLES)})
        }
        result = []
        for table in TABLES:
            if table not in estimates:
                continue
            if estimates[table] < limit:
                # the names come from TABLES, never from a caller
                rows = conn.execute(text(f"select count(*) from {table}")).scalar_one()
                result.append(TableCount(table, int(rows), True))
            else:
                result.append(TableCount(table, int(estimates[table]), False))
    return result


def database_size(engine: Engine) -> int:
    """The database's size on disk, in bytes."""
    with engine.connect() as conn:
        return int(conn.execute(text("select pg_database_size(current_database())")).scalar_one())


def describe_url(url: URL | str) -> str:
    """A database URL for display, with the password hidden."""
    if isinstance(url, str):
        url = make_url(url)
    return url.render_as_string(hide_password=True)


def report(engine: Engine, settings: Settings, minutes: int = 60) -> HealthReport:
    """Everything the Health page shows, in one call."""
    with engine.connect() as conn:
        checked_at = conn.execute(text("select now()")).scalar_one()
    replica = replica_status(engine)
    last_at, last_age = last_event(engine)
    return HealthReport(
        checked_at=checked_at,
        listeners=listeners(engine),
        last_event_at=last_at,
        last_event_age=last_age,
        events_per_minute=events_per_minute(engine, minutes),
        tables=table_counts(engine),
        database_bytes=database_size(engine),
        database_url=describe_url(engine.url),
        server_url=settings.server_url,
        embedded=settings.embedded,
        replica_lag=None if replica is None else replica.lag,
        replica_streaming=None if replica is None else replica.streaming,
    )
