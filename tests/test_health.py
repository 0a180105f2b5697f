"""presence_core.analytics.health against a real PostgreSQL: listeners' heartbeats, the last
event, events per minute, row counts and size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from presence_core.analytics import health
from presence_core.config import load_settings
from presence_core.database import tables
from presence_core.database.storage import Transition, write_batch


def _listener(engine, name, heartbeat_ago, stopped=False, last_event_ago=None, **extra):
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            tables.listeners.insert().values(
                listener=name,
                started_at=now - timedelta(hours=1),
                heartbeat_at=now - heartbeat_ago,
                connected=not stopped,
                stopped_at=now if stopped else None,
                last_event_at=None if last_event_ago is None else now - last_event_ago,
                **extra,
            )
        )


def test_no_listener_and_no_events(engine):
    assert health.listeners(engine) == []
    assert health.last_event(engine) == (None, None)
    minutes = health.events_per_minute(engine, 5)
    assert [count for _, count in minutes] == [0, 0, 0, 0, 0]


def test_listener_alive_stale_or_stopped(engine):
    _listener(engine, "fresh", timedelta(seconds=2), events_received=5, transitions_written=3)
    _listener(engine, "stale", timedelta(minutes=5))
    _listener(engine, "stopped", timedelta(seconds=1), stopped=True)
    found = {item.listener: item for item in health.listeners(engine)}
    assert found["fresh"].alive and found["fresh"].events_received == 5
    assert not found["stale"].alive
    assert not found["stopped"].alive
    assert timedelta(minutes=4) < found["stale"].heartbeat_age < timedelta(minutes=6)
    # live ones first, stopped ones last
    assert [item.listener for item in health.listeners(engine)][-1] == "stopped"


def test_last_event_is_the_newest_of_heartbeat_and_transitions(engine):
    now = datetime.now(UTC)
    write_batch(engine, [Transition("1", "online", now - timedelta(minutes=3), now)])
    at, age = health.last_event(engine)
    assert abs((at - (now - timedelta(minutes=3))).total_seconds()) < 0.01
    assert timedelta(minutes=3) <= age < timedelta(minutes=3, seconds=10)
    _listener(engine, "l", timedelta(0), last_event_ago=timedelta(seconds=20))
    _, age = health.last_event(engine)
    assert timedelta(seconds=20) <= age < timedelta(seconds=30)


def test_events_per_minute_counts_by_received_minute(engine):
    with engine.connect() as conn:
        db_now = conn.execute(text("select date_trunc('minute', now())")).scalar_one()
    received = [db_now + timedelta(seconds=1)] * 3 + [db_now - timedelta(minutes=2)] * 2
    write_batch(
        engine,
        [
            Transition(f"u{i}", "online", at - timedelta(seconds=1), at)
            for i, at in enumerate(received)
        ],
    )
    minutes = health.events_per_minute(engine, 4)
    assert [m for m, _ in minutes][-1] == db_now
    assert [count for _, count in minutes] == [0, 2, 0, 3]


def test_table_counts_exact_and_estimated(engine):
    now = datetime.now(UTC)
    write_batch(engine, [Transition(str(i), "online", now, now) for i in range(7)])
    counts = {c.table: c for c in health.table_counts(engine)}
    assert counts["presence_users"].rows == 7 and counts["presence_users"].exact
    assert counts["presence_transitions"].rows == 7
    assert counts["presence_coverage"].rows == 0
    with engine.begin() as conn:
        conn.execute(text("analyze presence_transitions"))
    # with a tiny limit the planner's estimate is used instead of count(*)
    estimated = {c.table: c for c in health.table_counts(engine, limit=1)}
    assert not estimated["presence_transitions"].exact
    assert estimated["presence_transitions"].rows == 7


def test_report_hides_the_password(engine, database_url):
    settings = load_settings({"PRESENCE_SERVER_URL": "http://10.0.0.5:4100"})
    report = health.report(engine, settings, minutes=3)
    assert report.server_url == "http://10.0.0.5:4100"
    assert report.database_url == database_url.render_as_string(hide_password=True)
    assert report.database_bytes > 1_000_000
    assert len(report.events_per_minute) == 3
    assert not report.listener_alive and report.alive_since is None
    # read from the primary: no replica, no lag (tests/test_replica.py has a real replica)
    assert report.replica_lag is None and report.replica_streaming is None
    assert not report.on_replica
    shown = health.describe_url("postgresql+psycopg://me:s3cret@db:5432/presence")
    assert "s3cret" not in shown and "***" in shown
