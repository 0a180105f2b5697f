"""Alembic environment for the presence tables.

`presence migrate` passes an open connection in ``config.attributes``. The
`alembic` command line passes none: then the URL is PRESENCE_DATABASE_URL or,
when unset, the embedded PostgreSQL (started if needed). ``--sql`` renders
PostgreSQL DDL without connecting.
"""

from alembic import context
from sqlalchemy import create_engine

from presence_core.database.tables import metadata

config = context.config


def include_name(name, type_, parent_names) -> bool:
    """Only presence's own tables: the database may be shared with an application."""
    if type_ == "table":
        return name in metadata.tables
    return True


def run_offline() -> None:
    context.configure(
        url="postgresql+psycopg://",
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    from presence_core.config import load_settings
    from presence_core.database.engine import resolve_url

    engine = create_engine(resolve_url(load_settings()))
    try:
        with engine.connect() as conn:
            _run_with(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
