"""Reads from a real streaming replica (PRESENCE_READ_DATABASE_URL) while writers use the
primary, and the replica's lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from presence_core import analytics
from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.database.storage import Transition, write_batch
from tests.conftest import free_port
from tests.replica import streaming_replica
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def primary(tmp_path):
    server = EmbeddedPostgres(tmp_path / "primary")
    info = server.start(port=free_port())
    engine = db.make_engine(info.url)
    db.migrate(engine)
    yield server, info, engine
    engine.dispose()
    server.stop()


def test_reads_go_to_the_replica_and_writes_to_the_primary(primary):
    server, info, writer = primary
    with streaming_replica(server, info) as replica_url:
        settings = load_settings(
            {},
            database_url=info.url,
            read_database_url=replica_url.render_as_string(hide_password=False),
        )
        reader = db.connect_reader(settings)
        try:
            assert reader.url.port == replica_url.port != writer.url.port
            now = datetime.now(UTC)
            write_batch(writer, [Transition("r1", "online", now, now, user_name="Rita")])

            def seen_on_replica():
                frame = analytics.current_presence(reader)
                return list(frame["user_id"]) == ["r1"]

            wait_for(seen_on_replica, timeout=30, what="the row streamed to the replica")
            with pytest.raises(DBAPIError, match="read-only"), reader.begin() as conn:
                conn.execute(text("insert into presence_rollup_state (name) values ('x')"))
            lag = db.replication_lag(reader)
            assert lag is not None and timedelta(0) <= lag < timedelta(seconds=30)
            assert db.replication_lag(writer) is None  # a primary has no lag
        finally:
            reader.dispose()


def test_without_a_replica_readers_use_the_primary(primary):
    _, info, _ = primary
    reader = db.connect_reader(load_settings({}, database_url=info.url))
    try:
        assert reader.url.port == info.port
        assert db.replication_lag(reader) is None
    finally:
        reader.dispose()
