"""Writing and reading presence state: the storage layer the server, listener and
history generator share.

:func:`write_batch` is the one way transitions enter the database. It copies a
batch with COPY, inserting only what is new (the unique key
``(user_id, occurred_at, status)`` makes a replay insert nothing twice), and
brings ``presence_users`` up to date, all in one transaction. The summaries the
dashboard and exports read (sessions, time in status: migration 0005) are kept
in that same transaction: by this writer itself for a big batch that only appends
(:mod:`presence_core.database.appends`, a busy listener's usual batch), by the triggers on
``presence_transitions`` for anything else, so no other writer has to remember
them; a replay leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import DataError
from psycopg.errors import UniqueViolation
from sqlalchemy import Connection, Engine, text

# the protocol's rules, kept in one place: the status that ends presence, and how a
# userId is stored as text
from presence_core.protocol import OFFLINE, user_id_text

__all__ = [
    "OFFLINE",
    "BatchResult",
    "Sighting",
    "Transition",
    "UserState",
    "copy_rows",
    "current_state",
    "present_users",
    "upsert_users",
    "user_id_text",
    "write_batch",
]


# Transition and Sighting are made once per event on the listener's hot path: slots
# and no frozen (whose __init__ costs four times as much); treat them as read-only.
@dataclass(slots=True)
class Transition:
    """One change of a user's status.

    ``occurred_at`` is when it happened (as the server dated it), ``received_at``
    when it was received (by the database's clock, as the writer measures it); both
    timezone-aware. The user's
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

    def __reduce__(self):  # pickled as its fields (the listener's writer process), 3x cheaper
        return (
            Transition,
            (
                self.user_id,
                self.status,
                self.occurred_at,
                self.received_at,
                self.inferred,
                self.reason,
                self.source,
                self.user_type,
                self.user_name,
                self.team,
            ),
        )


@dataclass(slots=True)
class Sighting:
    """A sign of life that is not a change of status (a heartbeat, a repeated
    ``userOnline``): it advances ``last_seen`` and may carry names."""

    user_id: str
    last_seen: datetime
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None

    def __reduce__(self):
        return (
            Sighting,
            (self.user_id, self.last_seen, self.user_type, self.user_name, self.team),
        )


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


TRANSITION_COLUMNS = (
    "user_id",
    "status",
    "occurred_at",
    "received_at",
    "inferred",
    "reason",
    "source",
)
# PostgreSQL types of TRANSITION_COLUMNS, for binary COPY
TRANSITION_TYPES = ("text", "text", "timestamptz", "timestamptz", "bool", "text", "text")

_STAGE_TABLE = """
create temporary table if not exists presence_stage (
    user_id text not null,
    status text not null,
    occurred_at timestamptz not null,
    received_at timestamptz not null,
    inferred boolean not null,
    reason text,
    source text
) on commit delete rows
"""

# on conflict do nothing also skips duplicates inside the batch itself
_INSERT_NEW = """
insert into presence_transitions
    (user_id, status, occurred_at, received_at, inferred, reason, source)
select user_id, status, occurred_at, received_at, inferred, reason, source
from presence_stage
on conflict on constraint uq_presence_transitions_event do nothing
"""

# One row per user of the batch, summarised in Python (see _user_rows), as one array
# per column (binary parameters: no staging table to create, fill and empty);
# status_since is null for users seen only through sightings.
# The batch's latest transition sets a user's status, unless the stored status
# is newer (a replay of old events must not roll the current state back).
# last_seen only moves forward. Names and team fill in, never erase.
_UPSERT_USERS = """
insert into presence_users
    (user_id, status, status_since, last_seen, user_type, user_name, team)
select * from unnest(%b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[],
                     %b::text[], %b::text[], %b::text[])
on conflict (user_id) do update set
    status = case
        when excluded.status_since is not null
         and (presence_users.status_since is null
              or excluded.status_since >= presence_users.status_since)
        then excluded.status else presence_users.status end,
    status_since = greatest(presence_users.status_since, excluded.status_since),
    last_seen = greatest(presence_users.last_seen, excluded.last_seen),
    user_type = coalesce(excluded.user_type, presence_users.user_type),
    user_name = coalesce(excluded.user_name, presence_users.user_name),
    team = coalesce(excluded.team, presence_users.team)
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
    inserted = _insert_transitions(conn, transitions) if transitions else 0
    users = _user_rows(transitions, sightings)
    if users:
        upsert_users(conn, users)
    return BatchResult(inserted=inserted, duplicates=len(transitions) - inserted)


def _insert_transitions(conn: Connection, transitions: Sequence[Transition]) -> int:
    """Insert the new transitions; return how many there were.

    Usually every transition of a batch is new and comes after its user's stored
    rows, so a big batch is first copied straight into the table inside a savepoint
    (as fast as a raw COPY) and summarised here (:mod:`presence_core.database.appends`).
    A small one, or one that is new but not only appends, is copied with the
    summaries left to the triggers. When any row is already there (a replay, or a server and
    a listener logging the same event), the batch goes through a staging table and
    ``on conflict do nothing`` instead.
    """
    from presence_core.database.appends import DUPLICATES, write_appends  # imports this

    rows = [
        (t.user_id, t.status, t.occurred_at, t.received_at, t.inferred, t.reason, t.source)
        for t in transitions
    ]
    taken = write_appends(conn, rows)
    if isinstance(taken, int):
        return taken
    if taken != DUPLICATES:
        try:
            with conn.begin_nested():
                return copy_rows(
                    conn, "presence_transitions", TRANSITION_COLUMNS, rows, TRANSITION_TYPES
                )
        except UniqueViolation:
            pass
    conn.execute(text(_STAGE_TABLE))
    copy_rows(conn, "presence_stage", TRANSITION_COLUMNS, rows, TRANSITION_TYPES)
    inserted = conn.execute(text(_INSERT_NEW)).rowcount
    conn.execute(text("truncate presence_stage"))
    return inserted


USER_COLUMNS = ("user_id", "status", "status_since", "last_seen", "user_type", "user_name", "team")


def upsert_users(conn: Connection, rows: Iterable[tuple]) -> None:
    """Bring ``presence_users`` up to date from one row per user, in
    :data:`USER_COLUMNS` order. A row's status applies when its ``status_since``
    is not older than the stored one (None: the status is left alone);
    ``last_seen`` only moves forward; names fill in, never erase."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    if columns:
        with conn.connection.driver_connection.cursor() as cursor:
            cursor.execute(_UPSERT_USERS, columns)


def _user_rows(transitions: Sequence[Transition], sightings: Sequence[Sighting]) -> list[tuple]:
    """One row per user for ``presence_user_stage``: the latest transition's
    status and time (by occurred_at, then received_at), the latest sign of life,
    and the most recent non-null type, name and team."""
    # per user: [status, since, key, seen, {field: (at, value)} or None]; a plain list
    # because the listener calls this for every batch, on the writer's hot path
    users: dict[str, list] = {}
    for t in transitions:
        row = users.get(t.user_id)
        key = (t.occurred_at, t.received_at)
        if row is None:
            row = users[t.user_id] = [t.status, t.occurred_at, key, t.occurred_at, None]
        else:
            if key >= row[2]:
                row[0], row[1], row[2] = t.status, t.occurred_at, key
            if t.occurred_at > row[3]:
                row[3] = t.occurred_at
        if t.user_type is not None or t.user_name is not None or t.team is not None:
            row[4] = _names(row[4], t.occurred_at, t)
    for s in sightings:
        row = users.get(s.user_id)
        if row is None:
            row = users[s.user_id] = [OFFLINE, None, None, s.last_seen, None]
        elif s.last_seen > row[3]:
            row[3] = s.last_seen
        if s.user_type is not None or s.user_name is not None or s.team is not None:
            row[4] = _names(row[4], s.last_seen, s)
    result = []
    for user_id, (status, since, _key, seen, names) in users.items():
        if names is None:
            result.append((user_id, status, since, seen, None, None, None))
        else:
            result.append(
                (
                    user_id,
                    status,
                    since,
                    seen,
                    names.get("user_type", (None, None))[1],
                    names.get("user_name", (None, None))[1],
                    names.get("team", (None, None))[1],
                )
            )
    return result


def _names(found: dict | None, at: datetime, item: Transition | Sighting) -> dict:
    """``found`` (field -> (at, value)) updated with ``item``'s non-null names when
    they are at least as recent."""
    found = {} if found is None else found
    for field in ("user_type", "user_name", "team"):
        value = getattr(item, field)
        if value is not None:
            known = found.get(field)
            if known is None or at >= known[0]:
                found[field] = (at, value)
    return found


def copy_rows(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[tuple],
    types: Sequence[str] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> int:
    """COPY rows (tuples in ``columns`` order) into ``table`` on the connection's
    own transaction; returns how many rows the table took (a row a trigger drops,
    such as one for a pruned month, is not counted). ``meanwhile`` is called once
    the rows are sent and before the COPY ends: the server is still storing them,
    so what it does costs no time on a machine with a core to spare.

    With ``types`` (the columns' PostgreSQL type names) the COPY is binary, which
    costs the client several times less CPU than text; the values must then be
    of the matching Python types (str, bool, aware datetime, None); any other
    value raises :class:`psycopg.DataError`, as text COPY would.
    """
    raw = conn.connection.driver_connection
    sql = f"copy {table} ({', '.join(columns)}) from stdin"
    if types is not None:
        sql += " (format binary)"
    with raw.cursor() as cursor:
        with cursor.copy(sql) as copy:
            if types is not None:
                copy.set_types(list(types))
            try:
                for row in rows:
                    copy.write_row(row)
            except (TypeError, ValueError, OverflowError) as exc:
                # a value the binary format cannot carry: refused like one the database refuses
                raise DataError(f"COPY {table}: {exc} in row {row!r}") from None
            if meanwhile is not None:
                meanwhile()
        return cursor.rowcount


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
