"""Migration 0013 (``presence_flapping_days``, the flapping users' kept days): on a
populated database the upgrade changes no answer and the kept days start serving,
a late row still replaces what it changes, the SQL for DBAs creates the table, and
the downgrade drops it with flapping read as before."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import text

from presence_core import analytics
from presence_core.database import engine as db
from presence_core.database.storage import Transition, write_batch
from tests.test_analytics_flapping import burst, found, reference

T = datetime(2026, 3, 2, 23, 58, tzinfo=UTC)  # bursts across midnights too


def test_0013_keeps_flapping_days_and_downgrades_cleanly(empty_database_url):
    engine = db.make_engine(empty_database_url)
    lo, hi = T - timedelta(days=3), T + timedelta(days=4)
    window = timedelta(minutes=10)

    def agree() -> list:
        got = found(analytics.flapping_users(engine, lo, hi))
        assert got == reference(engine, lo, hi, 6, window)
        return got

    def kept() -> int:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from presence_flapping_days")).scalar()

    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0012")
        rows = []
        for k in range(4):
            rows += burst(f"u{k}", T + timedelta(days=k, seconds=k))
            rows += [Transition(f"calm{k}", "online", T + timedelta(hours=k), T)]
        write_batch(engine, rows)
        before = agree()  # at 0012: every user read
        assert len(before) == 4

        db.migrate(engine)
        assert db.current_revision(engine) == "0013"
        assert agree() == before
        assert kept() == 8  # the period's whole past UTC days
        write_batch(engine, burst("late", T + timedelta(days=1, hours=3)))
        assert len(agree()) == 5  # the days it touched were replaced

        buffer = io.StringIO()
        config = db.alembic_config()
        config.output_buffer = buffer
        command.upgrade(config, "0012:0013", sql=True)
        assert "CREATE TABLE presence_flapping_days" in buffer.getvalue()

        with engine.begin() as conn:
            command.downgrade(db.alembic_config(conn), "0012")
        with engine.connect() as conn:
            assert (
                conn.execute(text("select to_regclass('presence_flapping_days')")).scalar() is None
            )
        assert len(agree()) == 5
    finally:
        engine.dispose()
