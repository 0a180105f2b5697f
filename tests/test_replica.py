"""Reads from a real streaming replica (PRESENCE_READ_DATABASE_URL) while writers use the
primary, and the replica's lag: the dashboard's loader, the Health page and
`presence export` read the replica (proved by pausing its replay: what the primary
has and the replica has not yet replayed is not shown)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from streamlit.testing.v1 import AppTest

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


def test_a_replica_behind_the_schema_is_refused_with_its_own_message(primary):
    _, info, writer = primary
    with writer.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("create database not_migrated"))
    behind = writer.url.set(database="not_migrated").render_as_string(hide_password=False)
    settings = load_settings({}, database_url=info.url, read_database_url=behind)
    with pytest.raises(db.SchemaMismatch, match=r"^read replica \(PRESENCE_READ_DATABASE_URL\)"):
        db.connect_reader(settings)


def test_without_a_replica_readers_use_the_primary(primary):
    _, info, _ = primary
    reader = db.connect_reader(load_settings({}, database_url=info.url))
    try:
        assert reader.url.port == info.port
        assert db.replication_lag(reader) is None
    finally:
        reader.dispose()


APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def _set_replay(url, paused: bool) -> None:
    """Pause or resume the standby's replay of the WAL it receives (superuser only)."""
    engine = db.make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            call = "pg_wal_replay_pause" if paused else "pg_wal_replay_resume"
            conn.execute(text(f"select {call}()"))

            def state():
                value = conn.execute(text("select pg_get_wal_replay_pause_state()")).scalar()
                return value == ("paused" if paused else "not paused")

            wait_for(state, timeout=30, what=f"replay {'paused' if paused else 'resumed'}")
    finally:
        engine.dispose()


def _received_not_replayed(reader) -> bool:
    with reader.connect() as conn:
        return bool(
            conn.execute(
                text("select pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
            ).scalar()
        )


def _page(name: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    assert not at.exception, at.exception
    if name:
        at.switch_page(f"../pages/{name}.py").run()
        assert not at.exception, at.exception
    return at


def test_dashboard_and_export_read_the_replica(primary, monkeypatch, tmp_path):
    from presence_core.dashboard import data

    server, info, writer = primary
    with streaming_replica(server, info) as replica_url:
        replica = replica_url.render_as_string(hide_password=False)
        env = {
            "PRESENCE_DATABASE_URL": info.url,
            "PRESENCE_READ_DATABASE_URL": replica,
            "PRESENCE_HOME": str(tmp_path / "home"),
            "PRESENCE_TZ": "UTC",
            "PRESENCE_SERVER_URL": "http://127.0.0.1:4999",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        st.cache_data.clear()
        st.cache_resource.clear()
        reader = db.connect_reader(load_settings())
        try:
            now = datetime.now(UTC)
            write_batch(writer, [Transition("r1", "online", now, now, user_name="Rita")])
            wait_for(
                lambda: list(analytics.current_presence(reader)["user_id"]) == ["r1"],
                timeout=30,
                what="Rita streamed to the replica",
            )
            # the replica stops replaying: Paul is on the primary only, until resumed
            _set_replay(replica_url, paused=True)
            write_batch(writer, [Transition("r2", "online", now, now, user_name="Paul")])
            wait_for(lambda: _received_not_replayed(reader), timeout=30, what="Paul received")
            assert db.replication_lag(reader) > timedelta(0)

            # the dashboard's engine and cache key are the replica's
            assert data.engine().url.port == replica_url.port
            assert f"read:{replica}" in data.database_key()
            live = _page()
            shown = "\n".join(m.value for m in live.markdown)
            assert "Rita" in shown and "Paul" not in shown

            # every page reads (Activity's long spans come from the concurrency rollup,
            # which is refreshed on a primary but must not be written on the replica)
            for name in ("activity", "availability", "last_seen", "export"):
                _page(name)
            assert analytics.concurrency(reader, now - timedelta(days=2), now, "hour").shape[0]

            health = _page("health")
            metrics = {m.label: m.value for m in health.metric}
            assert metrics["Replica lag"] not in ("primary", "none")
            shown = "\n".join(m.value for m in health.markdown)
            assert "streaming replica" in shown and f":{replica_url.port}/" in shown

            exported = subprocess.run(
                [sys.executable, "-m", "presence_core", "export", "--dataset", "transitions"]
                + ["--output", "-"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert exported.returncode == 0, exported.stderr
            assert "Rita" in exported.stdout and "Paul" not in exported.stdout

            # nothing was lost: once replay resumes, the replica has Paul too
            _set_replay(replica_url, paused=False)
            wait_for(
                lambda: sorted(analytics.current_presence(reader)["user_id"]) == ["r1", "r2"],
                timeout=30,
                what="Paul replayed",
            )
            assert db.replication_lag(reader) == timedelta(0)
            assert db.replica_status(reader).streaming

            # the primary stops: the dashboard still reads (the replica), and Health says
            # the replica receives nothing
            assert server.stop()
            wait_for(
                lambda: not db.replica_status(reader).streaming,
                timeout=60,
                what="the replica noticing its primary is gone",
            )
            st.cache_data.clear()
            live = _page()
            shown = "\n".join(m.value for m in live.markdown)
            assert "Rita" in shown and "Paul" in shown
            health = _page("health")
            assert any("receives nothing from its primary" in e.value for e in health.error)
        finally:
            reader.dispose()
            st.cache_data.clear()
            st.cache_resource.clear()


def test_health_says_primary_without_a_replica(primary, monkeypatch, tmp_path):
    _, info, _ = primary
    monkeypatch.setenv("PRESENCE_DATABASE_URL", info.url)
    monkeypatch.delenv("PRESENCE_READ_DATABASE_URL", raising=False)
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))
    st.cache_data.clear()
    st.cache_resource.clear()
    try:
        health = _page("health")
        assert {m.label: m.value for m in health.metric}["Replica lag"] == "primary"
        assert "no read replica is configured" in "\n".join(m.value for m in health.markdown)
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()
