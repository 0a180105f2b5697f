"""One clock for stored times, the database's: a listener whose own clock is a minute
off still copies the server's times unchanged, so a server and a listener writing
into one database (the documented setup) store each transition once (issue 12,
point 1).

Real processes: ``presence serve`` in a child process writing into the test's
database, the listener in this one, a python-socketio client. A host clock a
minute off cannot be caused for real (the OS clock is the machine's), so it is
injected where the listener's code reads the local time: the ``datetime`` and
``time`` its modules (and :mod:`presence_core.database.clock`) see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import free_port
from tests.test_listener import ScriptedServer, User, db, listening, transition_rows
from tests.waiting import async_wait_for, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(cli_env: dict, tmp_path: Path) -> Iterator[str]:
    """``presence serve`` in a child process, writing into this test's database; its URL."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - kept open for the child
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "serve", "--port", str(port), "--grace", "0.3"],
        env=cli_env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: health(url) or process.poll() is not None, 60, what="presence serve")
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


@contextlib.contextmanager
def local_clock_off_by(skew: timedelta) -> Iterator[None]:
    """Make the listener's code (and the database clock's) read a local clock that is
    ``skew`` off the machine's: ``datetime.now`` and ``time.time`` in those modules."""
    real_datetime, real_time = datetime, time

    class SkewedDatetime(real_datetime):
        @classmethod
        def now(cls, tz=None):
            return real_datetime.now(tz) + skew

    class SkewedTime(types.ModuleType):
        def __getattr__(self, name):
            return getattr(real_time, name)

        def time(self) -> float:
            return real_time.time() + skew.total_seconds()

    shim = SkewedTime("time")
    patched: list[tuple[types.ModuleType, str, object]] = []
    for name, module in list(sys.modules.items()):
        if not (
            name.startswith("presence_core.listener") or name == "presence_core.database.clock"
        ):
            continue
        for attr, fake in (("datetime", SkewedDatetime), ("time", shim)):
            if getattr(module, attr, None) in (real_datetime, real_time):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, fake)
    assert patched, "no module reads the local clock?"
    try:
        yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


def database_now(engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("select clock_timestamp()")).scalar_one()


async def both_written(listener, url: str, events: int) -> None:
    """Wait until the listener has handled ``events`` events and committed everything,
    and the server's writer has nothing pending."""

    def done() -> bool:
        handled = listener.stats.events_received >= events and not listener.waiting()
        server = health(url)
        return bool(
            handled and not listener.pipeline.busy and server and server["pending_writes"] == 0
        )

    await async_wait_for(lambda: db(done), 30, what="both writers done")


@pytest.mark.parametrize("skew", [-60, 60], ids=["listener-60s-behind", "listener-60s-ahead"])
def test_listener_with_a_skewed_clock_writes_the_servers_keys(served, engine, tmp_path, skew):
    import presence_core.listener.listener  # noqa: F401 - every listener module loaded

    async def scenario():
        with local_clock_off_by(timedelta(seconds=skew)):
            async with listening(engine, served, tmp_path, writer="thread") as listener:
                # it measured its clock against the database's at start
                assert abs(listener.clock.offset + timedelta(seconds=skew)) < timedelta(seconds=1)
                tab = await User(served).connect()
                try:
                    await tab.online(1, "Ann")
                    came = await tab.broadcast_time(1, "online")
                    await tab.sio.emit("userStatus", {"userId": 1, "status": "away"})
                    away = await tab.broadcast_time(1, "away")
                    await tab.offline(1)
                    left = await tab.broadcast_time(1, "offline")
                    await both_written(listener, served, 3)
                finally:
                    await tab.close()
                assert listener.stats.rejected == 0
        rows = await db(transition_rows, engine)
        # exactly the server's rows: the listener's copies had the same keys
        assert [(r.user_id, r.status, r.occurred_at) for r in rows] == [
            ("1", "online", came),
            ("1", "away", away),
            ("1", "offline", left),
        ]
        assert not any(r.reason and "clock" in r.reason for r in rows)
        # and what the listener dated itself (its coverage) is by the database's clock
        now = await db(database_now, engine)
        with engine.connect() as conn:
            started = conn.execute(text("select started_at from presence_coverage")).scalar_one()
        assert now - timedelta(seconds=30) < started < now

    asyncio.run(scenario())


def test_status_flood_then_logout_is_stored_once(served, engine, tmp_path):
    """The issue's run: one client sends 10,000 status changes as fast as it can, then
    logs out, with the server and a listener writing. Every change the server
    announced is one row at its announced time, the logout one row, and no stored
    time is ahead of the database's clock by more than the clock rule allows."""
    flood = 10_000

    async def scenario():
        async with listening(engine, served, tmp_path) as listener:
            tab = await User(served).connect()
            try:
                await tab.online(1, "Ann")
                await tab.broadcast_time(1, "online")
                for i in range(flood):
                    status = "away" if i % 2 == 0 else "busy"
                    await tab.sio.emit("userStatus", {"userId": 1, "status": status})
                await tab.offline(1)
                await tab.broadcast_time(1, "offline")
                announced = [p for p in tab.seen if p.get("userId") == 1]
                await both_written(listener, served, len(announced))
            finally:
                await tab.close()
        rows = await db(transition_rows, engine)
        now = await db(database_now, engine)
        from presence_core.protocol import parse_last_seen

        assert [(r.status, r.occurred_at) for r in rows] == [
            (p["status"], parse_last_seen(p["lastSeen"])) for p in announced
        ]
        assert [r.status for r in rows].count("offline") == 1
        assert max(r.occurred_at for r in rows) <= now + timedelta(seconds=5)
        assert all(r.reason is None or not r.reason.startswith("clock") for r in rows)

    asyncio.run(scenario())


def test_the_clock_is_measured_again_while_running(engine, tmp_path):
    """Measured at start, then every ``clock_interval`` seconds (off the event loop),
    so a host clock stepped while the listener runs is caught up with."""

    async def scenario():
        server = await ScriptedServer().start()
        try:
            await measured(server)
        finally:
            await server.stop()

    async def measured(server):
        async with listening(engine, server.url, tmp_path, clock_interval=0.3) as listener:
            first = listener.clock.measured_at
            assert first is not None  # at start, before the first connect
            await async_wait_for(
                lambda: listener.clock.measured_at > first, 10, what="a second measurement"
            )
            # a step of this host's clock (injected where the clock module reads it)
            with local_clock_off_by(timedelta(seconds=-30)):
                await async_wait_for(
                    lambda: (
                        abs(listener.clock.offset - timedelta(seconds=30)) < timedelta(seconds=1)
                    ),
                    10,
                    what="the offset measured after the step",
                )
                assert abs(listener.now() - await db(database_now, engine)) < timedelta(seconds=1)

    asyncio.run(scenario())
