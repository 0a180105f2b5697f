"""The database layer: the engine, the embedded server, the tables and the one write path.

Everything that touches PostgreSQL for writing goes through here: the server,
the listener and the history generator all store transitions with
:func:`write_batch` (through :func:`presence_core.database.records.write_records`
where one refused row must not cost the others), so a replay or a second writer
inserts nothing twice. Reads for people live in :mod:`presence_core.analytics`, on
the engine :func:`connect_reader` gives (a streaming replica when one is configured).
"""

from presence_core.database.clock import DatabaseClock
from presence_core.database.embedded import EmbeddedError, EmbeddedPostgres, ServerInfo
from presence_core.database.engine import (
    ReplicaStatus,
    SchemaMismatch,
    check_schema,
    connect,
    connect_reader,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    replica_status,
    replication_lag,
    resolve_url,
)
from presence_core.database.storage import (
    Sighting,
    Transition,
    UserState,
    current_state,
    present_users,
    user_id_text,
    write_batch,
)
from presence_core.errors import DatabaseUnavailable

__all__ = [
    "DatabaseClock",
    "DatabaseUnavailable",
    "EmbeddedError",
    "EmbeddedPostgres",
    "ReplicaStatus",
    "SchemaMismatch",
    "ServerInfo",
    "Sighting",
    "Transition",
    "UserState",
    "check_schema",
    "connect",
    "connect_reader",
    "current_revision",
    "current_state",
    "head_revision",
    "make_engine",
    "migrate",
    "present_users",
    "replica_status",
    "replication_lag",
    "resolve_url",
    "user_id_text",
    "write_batch",
]
