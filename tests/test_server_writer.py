"""The server's DatabaseWriter writes through the listener's write path (issue 12,
point 2): a row PostgreSQL refuses costs only that row, and nothing pending is
lost at shutdown while the database is down. Real PostgreSQL throughout; the
outage is a real stop of a PostgreSQL of the test's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from presence_core.database.storage import Sighting, Transition, current_state
from presence_core.server.writer import DatabaseWriter, default_server_spool
from tests.test_listener_faults import own_postgres, restart_on_same_port  # noqa: F401
from tests.waiting import wait_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("select user_id, status from presence_transitions order by user_id")
            )
        ]


def came(user: str, seconds: int = 0, **names: str) -> Transition:
    at = T0 + timedelta(seconds=seconds)
    return Transition(user, "online", at, at, reason="userOnline", source="server", **names)


def test_a_refused_row_costs_only_that_row(engine, tmp_path):
    writer = DatabaseWriter(engine, interval=0.05, spool_dir=tmp_path / "spool")
    writer.start()
    try:
        # built directly, as the server's state would: past any protocol check
        writer.add_transition(came("a", 1, user_name="Ann"))
        writer.add_transition(came("nul", 2, user_name="bad\x00name"))  # text cannot hold NUL
        writer.add_transition(came("b\x00", 3))  # nor can a user id
        writer.add_transition(came("c", 4))
        writer.add_sighting(Sighting("a", T0 + timedelta(seconds=9)))
        assert writer.wait_idle(15)
        assert rows(engine) == [("a", "online"), ("c", "online")]
        assert (writer.refused, writer.transitions_written, writer.failures) == (2, 2, 0)
        # and it keeps writing: later batches go in as before
        writer.add_transition(came("d", 5))
        assert writer.wait_idle(15)
        assert rows(engine) == [("a", "online"), ("c", "online"), ("d", "online")]
        assert current_state(engine)["a"].last_seen == T0 + timedelta(seconds=9)
    finally:
        writer.stop()
    assert not (tmp_path / "spool").exists()  # nothing was kept back


def test_stopped_while_the_database_is_down_loses_nothing(own_postgres, tmp_path, monkeypatch):  # noqa: F811
    server, port, engine = own_postgres
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))  # where the default spool lives
    writer = DatabaseWriter(engine, interval=0.05, db_retry=0.2)
    writer.start()
    writer.add_transition(came("before"))
    assert writer.wait_idle(15)
    server.stop()
    for i in range(50):
        writer.add_transition(came(f"during-{i:02d}", i))
    writer.add_sighting(Sighting("before", T0 + timedelta(minutes=5)))
    wait_for(lambda: writer.failures >= 1, 15, what="a write that found the database down")
    writer.stop(timeout=3)
    assert writer.pending() == 51  # spooled on disk, not lost
    spool = default_server_spool(engine.url)
    assert spool.is_relative_to(tmp_path / "home") and list(spool.glob("*.jsonl"))

    restart_on_same_port(server, port)
    again = DatabaseWriter(engine, interval=0.05, db_retry=0.2)  # the next start
    again.start()
    try:
        wait_for(lambda: len(rows(engine)) == 51, 20, what="the spool replayed")
        assert again.wait_idle(15)
    finally:
        again.stop()
    assert rows(engine) == [("before", "online")] + [
        (f"during-{i:02d}", "online") for i in range(50)
    ]
    assert current_state(engine)["before"].last_seen == T0 + timedelta(minutes=5)
    assert not list(spool.glob("*.jsonl"))


def test_a_hanging_database_does_not_hold_shutdown_and_loses_nothing(engine, tmp_path):
    """A database that accepts connections and never answers (a black-holed host):
    stop() returns after its timeout, with what was pending in the spool."""
    import socket

    from presence_core.database import engine as db

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepts TCP, never speaks PostgreSQL
    try:
        stuck = db.make_engine(
            engine.url.set(host="127.0.0.1", port=hole.getsockname()[1]),
            connect_args={"connect_timeout": 30},
        )
        writer = DatabaseWriter(stuck, interval=0.05, spool_dir=tmp_path / "spool")
        writer.start()
        writer.add_transition(came("x"))
        writer.add_transition(came("y", 1))
        wait_for(lambda: writer.pending() == 2 and writer.pipeline.busy, 10, what="a write")
        started = datetime.now(UTC)
        writer.stop(timeout=1)
        assert datetime.now(UTC) - started < timedelta(seconds=5)
        assert writer.pending() == 2 and writer.failures == 0
        stuck.dispose()
    finally:
        hole.close()
    later = DatabaseWriter(engine, interval=0.05, spool_dir=tmp_path / "spool")
    later.start()
    try:
        wait_for(lambda: rows(engine) == [("x", "online"), ("y", "online")], 20, what="replay")
    finally:
        later.stop()


def test_the_default_spool_is_kept_per_database(database_url):
    other = database_url.set(database="elsewhere")
    assert default_server_spool(database_url) != default_server_spool(other)


@pytest.fixture(autouse=True)
def _no_home_spools(tmp_path, monkeypatch):
    """Every writer here spools under the test's own directory, never the user's home."""
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))
