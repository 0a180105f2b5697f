"""Connecting to the database: the URL, the engine, the schema's version.

:func:`connect` is what every command that needs the database calls: it starts
the embedded PostgreSQL when no URL is configured, checks that the database
answers, migrates the embedded database automatically, and refuses any other
database whose schema is behind, naming ``presence migrate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from presence_core import resources
from presence_core.config import Settings
from presence_core.database import partitions
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.errors import DatabaseUnavailable, PresenceError

MIN_SERVER_VERSION = 140000

Progress = Callable[[str], None]


class SchemaMismatch(PresenceError):
    """The database's schema is not the one this version of presence expects."""


def resolve_url(settings: Settings, progress: Progress | None = None) -> URL:
    """The database URL: the configured one, or the embedded server's (started if needed)."""
    if settings.database_url is not None:
        return settings.database_url
    info = EmbeddedPostgres(settings.home).start(progress=progress)
    return make_url(info.url)


def make_engine(url: URL | str, **kwargs) -> Engine:
    """An engine with the product's defaults (pre-ping, UTC sessions, short connect timeout)."""
    options = {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": 10, "options": "-c timezone=UTC"},
    }
    options.update(kwargs)
    return create_engine(url, **options)


def alembic_config(connection=None) -> Config:
    """Alembic's configuration for ``migrations/``, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(resources.migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision in ``migrations/versions``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None for a database never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_reachable(engine: Engine) -> int:
    """Connect once; return the server's version number or raise :class:`DatabaseUnavailable`."""
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("show server_version_num")).scalar_one())
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {_where(engine.url)}: {_first_line(exc)}"
        ) from None


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the database to head (idempotent); return (before, after) revisions."""
    version = check_reachable(engine)
    if version < MIN_SERVER_VERSION:
        raise SchemaMismatch(
            f"PostgreSQL {version // 10000} at {_where(engine.url)} is too old; presence needs 14+"
        )
    before = current_revision(engine)
    with engine.begin() as conn:
        # one migrator at a time, even when several processes start together
        conn.execute(text("select pg_advisory_xact_lock(hashtext('presence-migrate'))"))
        command.upgrade(alembic_config(conn), "head")
    return before, head_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaMismatch` unless the database is at this version's head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaMismatch(
            f"the database at {_where(engine.url)} has schema {current}, newer than this "
            f"version of presence knows (head {head}); upgrade presence"
        )
    raise SchemaMismatch(
        f"the database at {_where(engine.url)} is at schema {current or 'none'}, "
        f"behind {head}: run `presence migrate`"
    )


def connect(
    settings: Settings, *, progress: Progress | None = None, check: bool = True, **engine_kwargs
) -> Engine:
    """An engine on a reachable database whose schema is current.

    The embedded database is migrated on the way; any other one must have been
    migrated with ``presence migrate``. ``check=False`` skips the schema check.
    """
    url = resolve_url(settings, progress)
    engine = make_engine(url, **engine_kwargs)
    check_reachable(engine)
    if check:
        if settings.embedded and current_revision(engine) != head_revision():
            migrate(engine)
        check_schema(engine)
        partitions.ensure_ahead(engine)
    return engine


def connect_reader(
    settings: Settings, *, progress: Progress | None = None, **engine_kwargs
) -> Engine:
    """An engine for reading: the streaming replica of ``PRESENCE_READ_DATABASE_URL``
    when one is configured, else the same database writers use.

    The dashboard, exports and analytics read here, so long reports never
    compete with the listener's writes on the primary. A replica's schema is
    the primary's, so it is checked the same way (a replica that is behind says
    so); nothing is ever migrated or written through this engine.
    """
    if settings.read_database_url is None:
        return connect(settings, progress=progress, **engine_kwargs)
    engine = make_engine(settings.read_database_url, **engine_kwargs)
    check_reachable(engine)
    try:
        check_schema(engine)
    except SchemaMismatch as exc:
        engine.dispose()
        raise SchemaMismatch(
            f"read replica (PRESENCE_READ_DATABASE_URL): {exc}; a replica takes its schema "
            "from its primary: migrate the primary and let the replica catch up"
        ) from None
    return engine


@dataclass(frozen=True)
class ReplicaStatus:
    """A streaming replica's state: how far behind it is, and whether it is receiving.

    ``lag`` is zero when the replica has replayed everything it received while
    streaming (an idle primary sends nothing, so an old replay time alone would
    overstate it); otherwise the age of the last transaction replayed, which is
    also what a replica that lost its primary can say (it grows until streaming
    resumes). ``streaming`` is false while the replica receives nothing.
    """

    lag: timedelta
    streaming: bool


_REPLICA = """
select pg_is_in_recovery() as replica,
       exists (select 1 from pg_stat_wal_receiver where status = 'streaming') as streaming,
       pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() as caught_up,
       now() - pg_last_xact_replay_timestamp() as replay_age
"""


def replica_status(engine: Engine) -> ReplicaStatus | None:
    """The state of the replica ``engine`` reads from; None when it is a primary."""
    with engine.connect() as conn:
        row = conn.execute(text(_REPLICA)).one()
    if not row.replica:
        return None
    if row.streaming and row.caught_up:
        return ReplicaStatus(timedelta(0), True)
    age = max(row.replay_age, timedelta(0)) if row.replay_age is not None else timedelta(0)
    return ReplicaStatus(age, bool(row.streaming))


def replication_lag(engine: Engine) -> timedelta | None:
    """How far a streaming replica is behind its primary; None on a primary
    (see :class:`ReplicaStatus`)."""
    status = replica_status(engine)
    return None if status is None else status.lag


def _where(url: URL) -> str:
    host = url.host or (url.query.get("host") if url.query else None) or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database}"


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__
