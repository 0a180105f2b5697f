"""Monthly partitions of presence_transitions: the conversion of a populated database,
online and through `alembic upgrade --sql`, partitions made ahead, and rows for months
without a partition, which are never lost."""

from __future__ import annotations

import io
import subprocess
from datetime import UTC, datetime, timedelta

import psycopg
from alembic import command
from sqlalchemy import text

from presence_core.database import engine as db
from presence_core.database import partitions
from presence_core.database.embedded import _bin
from presence_core.database.storage import Transition, write_batch

BEFORE = "0003"  # the last revision before the partitions

ROWS_SQL = """
insert into presence_transitions
    (user_id, status, occurred_at, received_at, inferred, reason, source)
select 'u' || (i % 37), case when i % 2 = 0 then 'online' else 'offline' end,
       timestamptz '2024-02-27 23:59:59.999+00' + i * interval '7 hours 13 minutes',
       timestamptz '2024-02-27 23:59:59.999+00' + i * interval '7 hours 13 minutes 1 second',
       i % 5 = 0, case when i % 3 = 0 then 'disconnect' end, 'listener'
from generate_series(1, 5000) as i
"""

CHECKSUM_SQL = """
select count(*), md5(string_agg(
    concat_ws('|', id, user_id, status, occurred_at, received_at, inferred, reason, source),
    ',' order by id))
from presence_transitions
"""


def _conninfo(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _populated_at_before(url) -> tuple[int, str]:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(db.alembic_config(conn), BEFORE)
        with engine.begin() as conn:
            conn.execute(text(ROWS_SQL))
            return tuple(conn.execute(text(CHECKSUM_SQL)).one())
    finally:
        engine.dispose()


def _after(url) -> tuple[tuple[int, str], list[str], int]:
    with psycopg.connect(_conninfo(url)) as conn:
        summary = tuple(conn.execute(CHECKSUM_SQL).fetchone())
        names = [
            row[0]
            for row in conn.execute(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "where i.inhparent = 'presence_transitions'::regclass order by 1"
            )
        ]
        waiting = conn.execute("select count(*) from presence_transitions_default").fetchone()[0]
    return summary, names, waiting


def test_upgrade_converts_a_populated_database_without_loss(empty_database_url):
    before = _populated_at_before(empty_database_url)
    assert before[0] == 5000
    engine = db.make_engine(empty_database_url)
    try:
        db.migrate(engine)
        with engine.connect() as conn:
            assert partitions.is_partitioned(conn)
    finally:
        engine.dispose()
    summary, names, waiting = _after(empty_database_url)
    assert summary == before
    assert waiting == 0  # every old row found its month
    assert "presence_transitions_2024_02" in names  # the oldest row's month (its UTC month)
    assert "presence_transitions_default" in names
    last = datetime(2024, 2, 28, tzinfo=UTC) + 5000 * timedelta(hours=7, minutes=13)
    assert partitions.partition_name(partitions.month_of(last)) in names


def test_the_rendered_sql_converts_the_same_way(empty_database_url, tmp_path):
    before = _populated_at_before(empty_database_url)
    buffer = io.StringIO()
    config = db.alembic_config()
    config.output_buffer = buffer
    command.upgrade(config, f"{BEFORE}:head", sql=True)
    script = tmp_path / "upgrade.sql"
    script.write_text(buffer.getvalue())
    applied = subprocess.run(
        [_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)]
        + [_conninfo(empty_database_url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    summary, names, waiting = _after(empty_database_url)
    assert summary == before and waiting == 0
    assert "presence_transitions_2024_02" in names
    engine = db.make_engine(empty_database_url)
    try:
        db.check_schema(engine)  # the rendered SQL left the database at head
    finally:
        engine.dispose()


def test_partitions_are_made_ahead_and_replays_stay_no_ops(engine):
    now = datetime.now(UTC)
    partitions.ensure_ahead(engine, now)
    with engine.connect() as conn:
        names = {p.name for p in partitions.partitions(conn)}
    month = partitions.month_of(now)
    for _ in range(partitions.MONTHS_AHEAD + 1):
        assert partitions.partition_name(month) in names
        month = partitions._next(month)
    batch = [
        Transition("7", "online", now, now),
        Transition("7", "offline", now + timedelta(1), now),
    ]
    assert write_batch(engine, batch).inserted == 2
    assert write_batch(engine, batch).inserted == 0
    assert write_batch(engine, batch[:1]).inserted == 0


def test_a_month_without_a_partition_loses_nothing(engine):
    far = datetime(2031, 7, 14, 12, 30, tzinfo=UTC)
    batch = [
        Transition("far", "online", far, far),
        Transition("far", "offline", far + timedelta(hours=2), far),
    ]
    assert write_batch(engine, batch).inserted == 2
    with engine.connect() as conn:
        waiting = conn.execute(text("select count(*) from presence_transitions_default")).scalar()
    assert waiting == 2  # caught by the default partition
    created = partitions.ensure_range(engine, far, far)
    assert created == ["presence_transitions_2031_07"]
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from presence_transitions_default")).scalar() == 0
        assert conn.execute(text("select count(*) from presence_transitions_2031_07")).scalar() == 2
    assert write_batch(engine, batch).inserted == 0  # the key still holds across the move
    assert partitions.ensure_range(engine, far, far) == []  # idempotent


def test_generated_history_fills_its_own_months_not_the_default(engine):
    from presence_core.synthetic.history import generate_history

    end = datetime(2026, 3, 3, 12, tzinfo=UTC)
    assert generate_history(engine, 6, 40, 3, end=end) > 0
    with engine.connect() as conn:
        waiting = conn.execute(text("select count(*) from presence_transitions_default")).scalar()
        names = {p.name for p in partitions.partitions(conn)}
    assert waiting == 0
    assert {"presence_transitions_2026_01", "presence_transitions_2026_02"} <= names
