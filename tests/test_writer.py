"""The listener's writer process (presence_core.listener.writer), driven directly: a real
child process writing into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from presence_core.database.records import CoverageMark
from presence_core.database.storage import Sighting, Transition
from presence_core.errors import DatabaseUnavailable
from presence_core.listener.writer import ProcessWriter, WriterLost
from tests.conftest import free_port

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def batch(first: int, count: int) -> list[Transition]:
    return [
        Transition(str(i % 3), "online" if i % 2 else "offline", T0 + timedelta(seconds=i), T0)
        for i in range(first, first + count)
    ]


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from presence_transitions")).scalar_one()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_batches_are_written_once(engine):
    async def scenario():
        writer = ProcessWriter(url_of(engine))
        try:
            records = [
                *batch(0, 10),
                Sighting("0", T0 + timedelta(minutes=5), user_name="Ann"),
                CoverageMark("w", T0),
            ]
            assert await writer.write(records) == (10, 0)
            assert await writer.write(records) == (0, 0)  # a replay inserts nothing
            assert await writer.write(batch(10, 5)) == (5, 0)
            return writer.pid
        finally:
            await writer.close()

    pid = asyncio.run(scenario())
    assert stored(engine) == 15
    with engine.connect() as conn:
        assert conn.execute(
            text("select user_name, last_seen from presence_users where user_id = '0'")
        ).one() == ("Ann", T0 + timedelta(minutes=5))
    assert not os.path.exists(f"/proc/{pid}")  # closed and reaped


def test_a_refused_row_costs_only_that_row(engine):
    async def scenario():
        writer = ProcessWriter(url_of(engine))
        try:
            bad = Transition("9", "online", datetime(2026, 3, 2, 9), T0)  # naive time
            return await writer.write([*batch(0, 4), bad, *batch(4, 4)])
        finally:
            await writer.close()

    assert asyncio.run(scenario()) == (8, 1)
    assert stored(engine) == 8


def test_database_down_is_reported_as_such():
    async def scenario():
        url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"
        writer = ProcessWriter(url, {"connect_timeout": 2})
        try:
            with pytest.raises(DatabaseUnavailable):
                await writer.write(batch(0, 3))
            assert writer.pid is not None  # the child lives on, for the retry
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_a_killed_writer_is_replaced(engine):
    async def scenario():
        writer = ProcessWriter(url_of(engine))
        try:
            assert await writer.write(batch(0, 3)) == (3, 0)
            first = writer.pid
            os.kill(first, signal.SIGKILL)
            with pytest.raises(WriterLost):
                await writer.write(batch(3, 3))
            assert writer.pid is None
            # the next batch starts a new child; the lost batch written again is not doubled
            assert await writer.write(batch(0, 6)) == (3, 0)
            assert writer.pid not in (None, first)
        finally:
            await writer.close()

    asyncio.run(scenario())
    assert stored(engine) == 6
