"""Writing and reading presence state: the storage layer the server, listener and
history generator share.

:func:`write_batch` is the one way transitions enter the database. It copies a
batch into a temporary table with COPY, inserts what is new (the unique key
``(user_id, occurred_at, status)`` makes a replay insert nothing twice) and
brings ``presence_users`` up to date, all in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

OFFLINE = "offline"


@dataclass(frozen=True)
class Transition:
    """One change of a user's status.

    ``occurred_at`` is when it happened (the server's clock), ``received_at``
    when it was received (the writer's clock); both timezone-aware. The user's
    name, type and team, where known, update ``presence_users``.
    """

    user_id: str
    status: str
    occurred_at: datetime
    received_at: datetime
    inferred: bool = False
    reason: str | None = None
    source: str | None = None
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class Sighting:
    """A sign of life that is not a change of status (a heartbeat, a repeated
    ``userOnline``): it advances ``last_seen`` and may carry names."""

    user_id: str
    last_seen: datetime
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class UserState:
    """A user's row in ``presence_users``."""

    user_id: str
    status: str
    status_since: datetime | None
    last_seen: datetime
    user_type: str | None
    user_name: str | None
    team: str | None
    hide_last_seen: bool


@dataclass(frozen=True)
class BatchResult:
    """What :func:`write_batch` did: rows inserted, and those already present."""

    inserted: int
    duplicates: int


_TRANSITION_COLUMNS = (
    "user_id",
    "status",
    "occurred_at",
    "received_at",
    "inferred",
    "reason",
    "source",
    "user_type",
    "user_name",
    "team",
)

_STAGE_TABLE = """
create temporary table if not exists presence_stage (
    user_id text not null,
    status text not null,
    occurred_at timestamptz not null,
    received_at timestamptz not null,
    inferred boolean not null,
    reason text,
    source text,
    user_type text,
    user_name text,
    team text
) on commit delete rows
"""

_INSERT_NEW = """
insert into presence_transitions
    (user_id, status, occurred_at, received_at, inferred, reason, source)
select distinct on (user_id, occurred_at, status)
    user_id, status, occurred_at, received_at, inferred, reason, source
from presence_stage
order by user_id, occurred_at, status, received_at
on conflict on constraint uq_presence_transitions_event do nothing
"""

# One row per user: the latest staged transition (by occurred_at) sets the
# status, unless the user's stored status is newer (a replay of old events
# must not roll the current state back). Names and team fill in, never erase.
_UPSERT_FROM_TRANSITIONS = """
insert into presence_users
    (user_id, user_type, user_name, team, status, status_since, last_seen)
select latest.user_id, names.user_type, names.user_name, names.team,
       latest.status, latest.occurred_at, latest.occurred_at
from (
    select distinct on (user_id) user_id, status, occurred_at
    from presence_stage
    order by user_id, occurred_at desc, received_at desc
) latest
join ({names}) names using (user_id)
on conflict (user_id) do update set
    status = case
        when presence_users.status_since is null
          or excluded.status_since >= presence_users.status_since
        then excluded.status else presence_users.status end,
    status_since = greatest(presence_users.status_since, excluded.status_since),
    last_seen = greatest(presence_users.last_seen, excluded.last_seen),
    user_type = coalesce(excluded.user_type, presence_users.user_type),
    user_name = coalesce(excluded.user_name, presence_users.user_name),
    team = coalesce(excluded.team, presence_users.team)
"""

_UPSERT_SIGHTINGS = """
insert into presence_users (user_id, user_type, user_name, team, last_seen)
select user_id, names.user_type, names.user_name, names.team, latest.last_seen
from (select user_id, max(last_seen) as last_seen from presence_sightings group by user_id) latest
join ({names}) names using (user_id)
on conflict (user_id) do update set
    last_seen = greatest(presence_users.last_seen, excluded.last_seen),
    user_type = coalesce(excluded.user_type, presence_users.user_type),
    user_name = coalesce(excluded.user_name, presence_users.user_name),
    team = coalesce(excluded.team, presence_users.team)
"""


def _latest_names(table: str, time_column: str) -> str:
    """Per user, the most recent non-null type, name and team seen in ``table``."""
    picks = ",\n    ".join(
        f"(array_agg({c} order by {time_column} desc) filter (where {c} is not null))[1] as {c}"
        for c in ("user_type", "user_name", "team")
    )
    return f"select user_id,\n    {picks}\nfrom {table} group by user_id"


_UPSERT_FROM_TRANSITIONS = _UPSERT_FROM_TRANSITIONS.format(
    names=_latest_names("presence_stage", "occurred_at")
)
_UPSERT_SIGHTINGS = _UPSERT_SIGHTINGS.format(names=_latest_names("presence_sightings", "last_seen"))

_SIGHTING_TABLE = """
create temporary table if not exists presence_sightings (
    user_id text not null,
    last_seen timestamptz not null,
    user_type text,
    user_name text,
    team text
) on commit delete rows
"""


def write_batch(
    engine_or_conn: Engine | Connection,
    transitions: Sequence[Transition] = (),
    sightings: Sequence[Sighting] = (),
) -> BatchResult:
    """Store transitions and sightings in one transaction; idempotent.

    Accepts an engine (a transaction is opened and committed) or a connection
    (the caller's transaction is used). Returns how many transitions were new.
    """
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.begin() as conn:
            return _write(conn, transitions, sightings)
    return _write(engine_or_conn, transitions, sightings)


def _write(
    conn: Connection, transitions: Sequence[Transition], sightings: Sequence[Sighting]
) -> BatchResult:
    inserted = 0
    if transitions:
        conn.execute(text(_STAGE_TABLE))
        _copy(
            conn,
            "presence_stage",
            _TRANSITION_COLUMNS,
            (
                (
                    t.user_id,
                    t.status,
                    t.occurred_at,
                    t.received_at,
                    t.inferred,
                    t.reason,
                    t.source,
                    t.user_type,
                    t.user_name,
                    t.team,
                )
                for t in transitions
            ),
        )
        inserted = conn.execute(text(_INSERT_NEW)).rowcount
        conn.execute(text(_UPSERT_FROM_TRANSITIONS))
    if sightings:
        conn.execute(text(_SIGHTING_TABLE))
        _copy(
            conn,
            "presence_sightings",
            ("user_id", "last_seen", "user_type", "user_name", "team"),
            ((s.user_id, s.last_seen, s.user_type, s.user_name, s.team) for s in sightings),
        )
        conn.execute(text(_UPSERT_SIGHTINGS))
    return BatchResult(inserted=inserted, duplicates=len(transitions) - inserted)


def _copy(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """COPY rows into ``table`` on the connection's own transaction."""
    raw = conn.connection.driver_connection
    sql = f"copy {table} ({', '.join(columns)}) from stdin"
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


_STATE_SQL = (
    "select user_id, status, status_since, last_seen, user_type, user_name, team,"
    " hide_last_seen from presence_users"
)


def current_state(engine: Engine, user_ids: Iterable[str] | None = None) -> dict[str, UserState]:
    """Every user's stored state, or only the named users'."""
    if user_ids is None:
        return _states(engine, _STATE_SQL, {})
    return _states(engine, _STATE_SQL + " where user_id = any(:ids)", {"ids": list(user_ids)})


def present_users(engine: Engine) -> dict[str, UserState]:
    """Users whose stored status is anything but offline."""
    return _states(engine, _STATE_SQL + " where status <> :offline", {"offline": OFFLINE})


def _states(engine: Engine, sql: str, params: dict) -> dict[str, UserState]:
    with engine.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    return {row.user_id: UserState(*row) for row in rows}


def user_id_text(value: object) -> str:
    """A protocol ``userId`` as stored text: ``123`` → ``"123"``, strings unchanged.

    Raises ValueError for anything else (bool, float, None, containers) and for
    empty or over-long ids (> 256 characters).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"userId must be a number or a string, not {type(value).__name__}")
    result = str(value)
    if not result.strip():
        raise ValueError("userId is empty")
    if len(result) > 256:
        raise ValueError(f"userId is {len(result)} characters long; at most 256 are accepted")
    return result
