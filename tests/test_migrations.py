"""The schema: Alembic migrations, the schema check, and the SQL for DBAs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect, text

from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.database.embedded import _bin

ROOT = Path(__file__).resolve().parent.parent


def plain(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_migrate_creates_the_design_tables_and_is_idempotent(empty_database_url):
    engine = db.make_engine(empty_database_url)
    assert db.current_revision(engine) is None
    before, after = db.migrate(engine)
    assert (before, after) == (None, db.head_revision())
    assert db.migrate(engine) == (after, after)
    inspector = inspect(engine)
    assert {"presence_users", "presence_transitions", "presence_coverage"} <= set(
        inspector.get_table_names()
    )
    users = {c["name"]: c for c in inspector.get_columns("presence_users")}
    assert users["last_seen"]["nullable"] is False
    assert "now()" in users["last_seen"]["default"]
    assert users["status"]["default"] == "'offline'::text"
    assert any(i["column_names"] == ["last_seen"] for i in inspector.get_indexes("presence_users"))
    unique = inspector.get_unique_constraints("presence_transitions")
    assert [u["column_names"] for u in unique] == [["user_id", "occurred_at", "status"]]
    engine.dispose()


def test_alembic_check_is_clean(database_url):
    env = {**os.environ, "PRESENCE_DATABASE_URL": plain(database_url)}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_offline_sql_for_dbas():
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")},
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE presence_transitions" in result.stdout
    assert "UNIQUE (user_id, occurred_at, status)" in result.stdout
    assert "CREATE INDEX ix_presence_users_last_seen" in result.stdout
    assert "CREATE TABLE presence_concurrency_quarters" in result.stdout


def test_connect_refuses_a_database_behind(empty_database_url):
    settings = load_settings({"PRESENCE_DATABASE_URL": plain(empty_database_url)})
    with pytest.raises(db.SchemaMismatch, match="run `presence migrate`"):
        db.connect(settings)
    engine = db.connect(settings, check=False)
    db.migrate(engine)
    engine.dispose()
    db.connect(settings).dispose()  # now accepted


def test_connect_refuses_a_database_ahead(engine, database_url):
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = '9999_future'"))
    settings = load_settings({"PRESENCE_DATABASE_URL": plain(database_url)})
    with pytest.raises(db.SchemaMismatch, match="newer than this version of presence"):
        db.connect(settings)


def test_unreachable_database_is_one_line():
    settings = load_settings({"PRESENCE_DATABASE_URL": "postgresql://u@127.0.0.1:9/nowhere"})
    with pytest.raises(db.DatabaseUnavailable, match="cannot reach the database at 127.0.0.1:9"):
        db.connect(settings)


def test_cli_migrate(empty_database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env |= {"PRESENCE_DATABASE_URL": plain(empty_database_url), "PRESENCE_HOME": str(tmp_path)}
    run = [sys.executable, "-m", "presence_core", "migrate"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"schema upgraded from empty to {db.head_revision()}" in first.stdout
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "already at" in second.stdout


def test_add_last_seen_column_sql_is_idempotent(database_url):
    conninfo = plain(database_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("create table app_agents (id int primary key, name text)")
        conn.execute("insert into app_agents values (1, 'Ann')")
    script = ROOT / "migrations" / "sql" / "add_last_seen_column.sql"
    for _ in range(2):
        result = subprocess.run(
            [_bin("psql"), conninfo, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
            + ["-v", "users_table=app_agents", "-f", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    with psycopg.connect(conninfo) as conn:
        column = conn.execute(
            "select is_nullable, column_default, data_type from information_schema.columns"
            " where table_name = 'app_agents' and column_name = 'last_seen'"
        ).fetchone()
        assert column == ("NO", "now()", "timestamp with time zone")
        assert conn.execute("select last_seen is not null from app_agents").fetchone() == (True,)
        indexes = conn.execute(
            "select indexdef from pg_indexes where tablename = 'app_agents'"
            " and indexdef like '%(last_seen)%'"
        ).fetchall()
        assert len(indexes) == 1


# --- 0005: the summaries kept on write are built from an existing, populated log ---------

SUMMARY_ROWS_SQL = """
insert into presence_transitions
    (user_id, status, occurred_at, received_at, inferred, reason, source)
select 'u' || (i % 23), (array['online', 'away', 'busy', 'offline', 'offline'])[1 + i % 5],
       timestamptz '2026-03-07 21:00:00.25+00' + (i / 2) * interval '37 minutes 11 seconds',
       timestamptz '2026-03-07 21:00:00.25+00' + (i / 2) * interval '37 minutes 12 seconds',
       i % 7 = 0, null, 'listener'
from generate_series(1, 3000) as i
"""


def _summaries_agree(url) -> None:
    from tests.test_rollups import check

    engine = db.make_engine(url)
    try:
        check(engine)
        with engine.connect() as conn:
            states = dict(
                conn.execute(text("select name, valid_until from presence_rollup_state")).all()
            )
            sessions = conn.execute(text("select count(*) from presence_sessions")).scalar()
        assert sessions > 100
        assert states["sessions"].year == states["status_days"].year == 9999  # kept on write
    finally:
        engine.dispose()


def test_upgrade_builds_the_summaries_of_a_populated_database(empty_database_url):
    from alembic import command

    from presence_core.database.storage import Transition, write_batch

    engine = db.make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0004")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
            before = conn.execute(text("select count(*) from presence_transitions")).scalar()
        db.migrate(engine)
        with engine.connect() as conn:
            after = conn.execute(text("select count(*) from presence_transitions")).scalar()
        assert before == after == 3000
        _summaries_agree(empty_database_url)
        # and kept from then on: a late row in the middle of the history
        late = datetime(2026, 3, 9, 3, 3, 3, tzinfo=UTC)
        write_batch(engine, [Transition("u1", "offline", late, late)])
        _summaries_agree(empty_database_url)
    finally:
        engine.dispose()


def test_rendered_sql_builds_the_same_summaries(empty_database_url, tmp_path):
    import io

    from alembic import command

    engine = db.make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0004")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
    finally:
        engine.dispose()
    buffer = io.StringIO()
    config = db.alembic_config()
    config.output_buffer = buffer
    command.upgrade(config, "0004:head", sql=True)
    script = tmp_path / "upgrade.sql"
    script.write_text(buffer.getvalue())
    applied = subprocess.run(
        [
            _bin("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(script),
            plain(empty_database_url),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    _summaries_agree(empty_database_url)


# --- 0007: the same summaries, kept by cheaper functions; nothing rebuilt ------------------


def test_0007_keeps_the_summaries_of_a_populated_database(empty_database_url):
    """Summaries built by 0005's functions stay exact across the upgrade to 0007 and
    a downgrade back to 0006, and each version's functions keep them from there:
    appends (0007's own path) and a late row (the general path)."""
    from alembic import command

    from presence_core.database.storage import Transition, write_batch

    engine = db.make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0006")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
        _summaries_agree(empty_database_url)
        with engine.begin() as conn:
            before = conn.execute(text(SUMMARY_CHECKSUM_SQL)).one()
        db.migrate(engine)
        assert db.current_revision(engine) == db.head_revision()
        with engine.begin() as conn:
            assert conn.execute(text(SUMMARY_CHECKSUM_SQL)).one() == before
        appended = datetime(2026, 4, 30, 8, tzinfo=UTC)
        write_batch(
            engine,
            [Transition(f"u{i}", "busy", appended, appended) for i in range(23)]
            + [Transition("u3", "offline", appended.replace(hour=9), appended.replace(hour=9))],
        )
        late = datetime(2026, 3, 9, 3, 3, 3, tzinfo=UTC)
        write_batch(engine, [Transition("u1", "offline", late, late)])
        _summaries_agree(empty_database_url)
        with engine.begin() as conn:
            command.downgrade(db.alembic_config(conn), "0006")
        again = appended.replace(hour=10)
        write_batch(engine, [Transition("u4", "online", again, again)])
        _summaries_agree(empty_database_url)
    finally:
        engine.dispose()


SUMMARY_CHECKSUM_SQL = """
select (select count(*) from presence_status_days),
       (select md5(string_agg(user_id || day || status || cum::text, ','
                              order by user_id, day, status)) from presence_status_days),
       (select md5(string_agg(user_id || started_at || coalesce(ended_at::text, ''), ','
                              order by user_id, started_at)) from presence_sessions),
       (select md5(string_agg(user_id || status || since, ',' order by user_id))
        from presence_status_tails)
"""


# --- 0009: the daily active users cache; the invalidation trigger marks it too -------------


def test_0009_caches_daily_active_users_and_downgrades_cleanly(empty_database_url):
    """On a populated database: after 0009, cached days equal the raw definition and a
    late row replaces the days it changes; the downgrade restores 0002's trigger
    function (the concurrency rollup is still marked) and drops the cache."""
    from datetime import date

    import pandas as pd
    from alembic import command

    from presence_core import analytics
    from presence_core.database.storage import Transition, write_batch

    engine = db.make_engine(empty_database_url)

    def dau(**kwargs):
        return analytics.daily_active_users(
            engine, date(2026, 3, 7), date(2026, 4, 20), "Asia/Kathmandu", **kwargs
        )

    def state(name):
        with engine.connect() as conn:
            return conn.execute(
                text("select dirty_from from presence_rollup_state where name = :n"), {"n": name}
            ).scalar()

    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0008")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0009")
        assert db.current_revision(engine) == "0009"
        pd.testing.assert_frame_equal(dau(), dau(rollup=False))
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from presence_daily_active")).scalar() > 40
        late = datetime(2026, 3, 9, 3, 3, 3, tzinfo=UTC)
        write_batch(engine, [Transition("u1", "offline", late, late)])
        # (u1 enters presence_users with its rows stored: marked from its first one)
        assert state("daily_active") < late and state("concurrency") <= late
        pd.testing.assert_frame_equal(dau(), dau(rollup=False))
        assert state("daily_active") is None  # the read deleted the changed days
        with engine.begin() as conn:
            conn.execute(text("truncate presence_transitions"))
        with engine.connect() as conn:  # -infinity: every day goes
            assert conn.execute(
                text(
                    "select dirty_from = '-infinity' from presence_rollup_state"
                    " where name = 'daily_active'"
                )
            ).scalar()
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
        pd.testing.assert_frame_equal(dau(), dau(rollup=False))

        with engine.begin() as conn:
            command.downgrade(db.alembic_config(conn), "0008")
            assert (
                conn.execute(text("select to_regclass('presence_daily_active')")).scalar() is None
            )
            names = conn.execute(text("select name from presence_rollup_state")).scalars().all()
            assert "daily_active" not in names
            conn.execute(text("update presence_rollup_state set dirty_from = null"))
        write_batch(engine, [Transition("u2", "offline", late, late)])
        assert state("concurrency") == late
        db.migrate(engine)
        pd.testing.assert_frame_equal(dau(), dau(rollup=False))
    finally:
        engine.dispose()


# --- 0010: the concurrency rollup's quarter-hours, built from the stored minutes ----------


def _psql(url, script: Path) -> None:
    applied = subprocess.run(
        [_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), plain(url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr


def test_0010_builds_the_quarters_from_the_minutes_and_downgrades_cleanly(
    empty_database_url, tmp_path
):
    """On a populated database whose minute rollup is partly dirty: after 0010 (run, or
    rendered with --sql and applied by psql) every valid quarter is its minutes' max and
    sum, and hourly and daily reads through the quarters equal the minutes' (==) and the
    raw log's, also after a late row; the downgrade drops the quarters and nothing else."""
    import io

    import pandas as pd
    from alembic import command

    from presence_core import analytics
    from presence_core.database.storage import Transition, write_batch
    from tests.test_rollups_concurrency import _quarters_match_their_minutes

    engine = db.make_engine(empty_database_url)
    lo = datetime(2026, 3, 7, 20, 13, 7, tzinfo=UTC)
    hi = datetime(2026, 4, 2, 9, 3, tzinfo=UTC)

    def reads() -> None:
        for bucket, zone in (("hour", "Pacific/Chatham"), ("day", "Asia/Kathmandu")):
            got = analytics.concurrency(engine, lo, hi, bucket, zone)
            minutes = analytics.concurrency(engine, lo, hi, bucket, zone, quarters=False)
            pd.testing.assert_frame_equal(got, minutes, check_exact=True)
            raw = analytics.concurrency(engine, lo, hi, bucket, zone, rollup=False)
            pd.testing.assert_frame_equal(got, raw, check_exact=False, rtol=1e-9, atol=1e-9)
        _quarters_match_their_minutes(engine)

    def at_0009_with_minutes() -> int:
        """Back at 0009: the minutes as the refresh left them, then dirty from a late row."""
        with engine.begin() as conn:
            command.downgrade(db.alembic_config(conn), "0009")
            assert (
                conn.execute(text("select to_regclass('presence_concurrency_quarters')")).scalar()
                is None
            )
            minutes = conn.execute(
                text("select count(*) from presence_concurrency_minutes")
            ).scalar()
        late = datetime(2026, 3, 20, 7, 7, 7, tzinfo=UTC)
        write_batch(engine, [Transition("u5", "online", late, late)])
        return minutes

    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0009")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
            # its users listed, as writers do (analytics counts the users listed there)
            conn.execute(
                text(
                    "insert into presence_users (user_id)"
                    " select distinct user_id from presence_transitions"
                )
            )
        db.migrate(engine)
        assert db.current_revision(engine) == db.head_revision()  # 0011, 0012: the user days
        assert analytics.refresh_rollups(engine, hi) > 25 * 24 * 60
        minutes = at_0009_with_minutes()
        assert minutes > 25 * 24 * 60

        db.migrate(engine)  # 0010 on the populated database
        with engine.connect() as conn:
            assert (
                conn.execute(text("select count(*) from presence_concurrency_minutes")).scalar()
                == minutes
            )
        _quarters_match_their_minutes(engine)  # before any refresh: built by the migration
        reads()
        late = datetime(2026, 3, 25, 11, 11, 11, tzinfo=UTC)
        write_batch(engine, [Transition("u7", "busy", late, late)])
        reads()

        # the same through the SQL a DBA applies
        at_0009_with_minutes()
        buffer = io.StringIO()
        config = db.alembic_config()
        config.output_buffer = buffer
        command.upgrade(config, "0009:0010", sql=True)
        script = tmp_path / "upgrade.sql"
        script.write_text(buffer.getvalue())
        _psql(empty_database_url, script)
        assert db.current_revision(engine) == "0010"
        _quarters_match_their_minutes(engine)
        reads()
    finally:
        engine.dispose()


# --- 0011, 0012: the per-user day cache, sharing the daily active users' mark -------------


def test_0011_and_0012_cache_user_days_and_downgrade_cleanly(empty_database_url):
    """On a populated database: after 0011 and 0012, time in status and the daily summary
    read cached whole days equal to the raw log's, a late row replaces the days it
    changes; back at 0010 the tables are gone and the daily active users' cache (whose
    invalidation also cleans the user days when they exist) still reads right."""
    from datetime import date

    import pandas as pd
    from alembic import command

    from presence_core import analytics
    from presence_core.database.storage import Transition, write_batch

    engine = db.make_engine(empty_database_url)
    period = (date(2026, 3, 7), date(2026, 4, 20), "Asia/Kathmandu")

    def agree() -> None:
        for read in (analytics.time_in_status, analytics.daily_summary):
            pd.testing.assert_frame_equal(
                read(engine, *period), read(engine, *period, rollup=False), check_dtype=False
            )
        dau = analytics.daily_active_users
        pd.testing.assert_frame_equal(dau(engine, *period), dau(engine, *period, rollup=False))

    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), "0010")
        with engine.begin() as conn:
            conn.execute(text(SUMMARY_ROWS_SQL))
        db.migrate(engine)
        assert db.current_revision(engine) == db.head_revision()
        agree()
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from presence_user_days_cover")).scalar() > 40
        late = datetime(2026, 3, 9, 3, 3, 3, tzinfo=UTC)
        write_batch(engine, [Transition("u1", "offline", late, late)])
        agree()
        with engine.connect() as conn:  # the days from the late row on were kept again
            assert (
                conn.execute(
                    text("select count(*) from presence_user_days_cover where day > '2026-03-09'")
                ).scalar()
                > 40
            )

        with engine.begin() as conn:
            command.downgrade(db.alembic_config(conn), "0010")
            for table in ("presence_user_days", "presence_user_days_cover"):
                assert conn.execute(text("select to_regclass(:t)"), {"t": table}).scalar() is None
        write_batch(engine, [Transition("u2", "offline", late, late)])
        dau = analytics.daily_active_users
        pd.testing.assert_frame_equal(dau(engine, *period), dau(engine, *period, rollup=False))
        db.migrate(engine)
        agree()
    finally:
        engine.dispose()
