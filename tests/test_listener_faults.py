"""Faults done for real: PostgreSQL stopped and started mid-stream, the Socket.IO
server killed and restarted on its port, the listener process SIGKILLed and
restarted. Each test ends by asserting the exact transitions stored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from presence_core.database import engine as dbmod
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.listener import Spool
from tests.conftest import free_port
from tests.nodejs import guide_server, node_available
from tests.test_listener import (
    User,
    coverage_rows,
    db,
    listening,
    make_listener,
    transition_rows,
    transitions,
    users,
    wait_rows,
)
from tests.waiting import async_wait_for

pytestmark = pytest.mark.skipif(not node_available(), reason="Node fixtures not installed")

ROOT = Path(__file__).resolve().parent.parent


# --- the database goes away and comes back ------------------------------------------------


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL of this test's own, which the test may stop and start."""
    server = EmbeddedPostgres(tmp_path / "pg-home")
    port = free_port()
    info = server.start(port=port)
    engine = dbmod.make_engine(
        info.url, connect_args={"connect_timeout": 2, "options": "-c timezone=UTC"}
    )
    dbmod.migrate(engine)
    yield server, port, engine
    engine.dispose()
    server.stop()


def restart_on_same_port(server: EmbeddedPostgres, port: int) -> None:
    """Start the stopped server again on its old port.

    ``EmbeddedPostgres.start`` checks that the port is free with a plain bind,
    which fails for a minute while the old connections sit in TIME_WAIT; the
    server itself binds with SO_REUSEADDR, so pg_ctl can start it at once.
    """
    server._pg_ctl_start(port)


def test_database_outage_is_spooled_and_replayed(own_postgres, tmp_path):
    server, port, engine = own_postgres

    async def scenario():
        with guide_server() as node:
            async with (
                listening(engine, node.url, tmp_path) as listener,
                users(node.url, 2) as [tab, hook],
            ):
                await tab.online(1, "Ann")
                await wait_rows(engine, [("1", "online", False)])

                await asyncio.to_thread(server.stop)
                await tab.online(2, "Bob")
                await tab.offline(1)
                await hook.set_status(2, "online")  # a repeat: a sighting, no row
                await tab.online(3, "Cy")
                await async_wait_for(
                    lambda: listener.spooling and listener.stats.spooled >= 4,
                    15,
                    what="records spooled while the database is down",
                )
                assert listener.stats.connected  # receiving never stopped
                assert listener.spool.segments()  # on disk
                await hook.set_status(3, "away")  # still receiving during the outage

                await asyncio.to_thread(restart_on_same_port, server, port)
                await wait_rows(
                    engine,
                    [
                        ("1", "online", False),
                        ("1", "offline", False),
                        ("2", "online", False),
                        ("3", "online", False),
                        ("3", "away", False),
                    ],
                    timeout=20,
                )
                await async_wait_for(lambda: not listener.spooling, 10, what="direct writes")
                assert not listener.spool.segments()
                assert listener.stats.replayed >= listener.stats.spooled - 1
                rows = {(r.user_id, r.status): r for r in await db(transition_rows, engine)}
                assert rows["1", "offline"].occurred_at == await tab.broadcast_time(1, "offline")
                assert rows["3", "online"].occurred_at == await tab.broadcast_time(3, "online")
                # after the outage, writing goes straight to the database again
                await tab.offline(2)
                await async_wait_for(
                    lambda: db(lambda: ("2", "offline", False) in transitions(engine)), 10
                )
            covered = await db(coverage_rows, engine)
            assert len(covered) == 1 and covered[0].ended_at is not None

    asyncio.run(scenario())


def test_listener_stopped_during_outage_replays_its_spool_at_next_start(own_postgres, tmp_path):
    server, port, engine = own_postgres

    async def scenario():
        with guide_server() as node:
            async with users(node.url) as [tab]:
                async with listening(engine, node.url, tmp_path) as listener:
                    await tab.online("a")
                    await wait_rows(engine, [("a", "online", False)])
                    await asyncio.to_thread(server.stop)
                    await tab.online("b")
                    await tab.offline("a")
                    await async_wait_for(lambda: listener.stats.spooled >= 2, 15)
                # stopped with the database down: the records (and the coverage's end)
                # wait in the spool
                assert listener.spool.segments()
                await asyncio.to_thread(restart_on_same_port, server, port)
                async with listening(engine, node.url, tmp_path) as second:
                    await wait_rows(
                        engine,
                        [("a", "online", False), ("a", "offline", False), ("b", "online", False)],
                    )
                    assert second.stats.replayed >= 2
                    assert not second.spool.segments()
            covered = await db(coverage_rows, engine)
            assert len(covered) == 2 and all(c.ended_at is not None for c in covered)

    asyncio.run(scenario())


# --- the server dies and comes back on its port ---------------------------------------------


def test_server_killed_and_restarted(engine, tmp_path):
    port = free_port()

    async def scenario():
        with guide_server(port) as first:
            tabs = [await User(first.url).connect() for _ in range(2)]
            await tabs[0].online(1, "Ann")
            await tabs[1].online(2, "Bob")
            listener = make_listener(engine, first.url, tmp_path)
            task = asyncio.create_task(listener.run())
            await wait_rows(engine, [("1", "online", False), ("2", "online", False)])
            first.process.kill()  # SIGKILL: no goodbye to anyone
            await async_wait_for(lambda: not listener.stats.connected, 10, what="disconnect")
            for tab in tabs:
                await tab.close()
        with guide_server(port) as second:
            await async_wait_for(lambda: listener.stats.reconciles >= 2, 20, what="reconcile")
            assert listener.stats.reconnects == 1
            async with users(second.url) as [tab]:
                await tab.online(2, "Bob")  # Bob comes back after the restart
                await wait_rows(
                    engine,
                    [
                        ("1", "online", False),
                        ("1", "offline", True),
                        ("2", "online", False),
                        ("2", "offline", True),
                        ("2", "online", False),
                    ],
                )
                back = await tab.broadcast_time(2, "online")
            listener.stop()
            await asyncio.wait_for(task, 20)
        gap, after = await db(coverage_rows, engine)
        assert gap.ended_at is not None and after.started_at > gap.ended_at
        inferred = [r for r in await db(transition_rows, engine) if r.inferred]
        assert {r.occurred_at for r in inferred} == {gap.ended_at}  # the start of the gap
        assert [r for r in await db(transition_rows, engine)][-1].occurred_at == back

    asyncio.run(scenario())


# --- the listener process is killed --------------------------------------------------------


def start_listener(cli_env: dict, url: str, tmp_path: Path, *extra: str) -> subprocess.Popen:
    log = open(tmp_path / "listener.log", "a")  # noqa: SIM115 - kept open for the child
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "presence_core",
            "listen",
            "--server",
            url,
            "--name",
            "proc",
            "--spool-dir",
            str(tmp_path / "spool"),
            *extra,
        ],
        env=cli_env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def heartbeat(engine):
    with engine.connect() as conn:
        return conn.execute(
            text("select * from presence_listeners where listener = 'proc'")
        ).one_or_none()


def writer_children(pid: int) -> list[int]:
    """Pids of the ``presence_core.listener.writer`` processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"presence_core.listener.writer" in cmdline:
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_process(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_sigkilled_listener_reconciles_at_next_start(engine, cli_env, tmp_path):
    async def scenario():
        with guide_server() as node:
            async with users(node.url) as [tab]:
                await tab.online(1, "Ann")
                await tab.online(2, "Bob")
                process = start_listener(cli_env, node.url, tmp_path)
                try:
                    await wait_rows(engine, [("1", "online", False), ("2", "online", False)], 30)
                    await tab.online(4, "Dee")
                    await wait_rows(
                        engine,
                        [("1", "online", False), ("2", "online", False), ("4", "online", False)],
                    )
                    seen_4 = await tab.broadcast_time(4, "online")
                    [writer] = writer_children(process.pid)
                    # a heartbeat after the last event, so the gap starts after it
                    await async_wait_for(
                        lambda: db(lambda: (h := heartbeat(engine)) and h.heartbeat_at > seen_4),
                        15,
                        what="a heartbeat after the last event",
                    )
                finally:
                    process.kill()  # SIGKILL: no flush, no goodbye
                    process.wait()
                # its writer process notices (its socket closes) and goes too
                await async_wait_for(lambda: not running(writer), 10, what="writer gone")
                beat = await db(heartbeat, engine)
                assert beat.stopped_at is None and beat.connected
                await tab.offline(1)
                await tab.online(3, "Cy")
                came_3 = await tab.broadcast_time(3, "online")
                process = start_listener(cli_env, node.url, tmp_path)
                try:
                    await wait_rows(
                        engine,
                        [
                            ("1", "online", False),
                            ("1", "offline", True),
                            ("2", "online", False),
                            ("3", "online", False),
                            ("4", "online", False),
                        ],
                        30,
                    )
                finally:
                    assert stop_process(process, signal.SIGINT) == 0
        killed, restarted = await db(coverage_rows, engine)
        assert killed.ended_at == beat.heartbeat_at  # closed at its last heartbeat
        assert restarted.ended_at is not None
        rows = {(r.user_id, r.status): r for r in await db(transition_rows, engine)}
        assert rows["1", "offline"].occurred_at == killed.ended_at
        assert rows["3", "online"].occurred_at == came_3
        final = await db(heartbeat, engine)
        assert final.stopped_at is not None and not final.connected

    asyncio.run(scenario())


def test_sigterm_flushes_closes_coverage_and_exits_0(engine, cli_env, tmp_path):
    metrics_port = free_port()

    async def scenario():
        with guide_server() as node:
            async with users(node.url) as [tab]:
                process = start_listener(
                    cli_env, node.url, tmp_path, "--metrics-port", str(metrics_port)
                )
                try:
                    await async_wait_for(
                        lambda: db(lambda: bool(coverage_rows(engine))), 30, what="connected"
                    )
                    await tab.online(7, "Gus")
                    await tab.offline(7)
                    await tab.online(7, "Gus")

                    def scrape() -> str:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        with urllib.request.urlopen(url, timeout=2) as response:
                            return response.read().decode()

                    counted = 'presence_listener_events_received_total{listener="proc"} 3.0'
                    body = await async_wait_for(
                        lambda: db(lambda: counted in (s := scrape()) and s), 15, what=counted
                    )
                    assert "presence_listener_queue_depth" in body
                    [writer] = writer_children(process.pid)
                finally:
                    code = await asyncio.to_thread(stop_process, process, signal.SIGTERM)
                assert code == 0
                assert not running(writer)  # the listener closed it before exiting
                # flushed before exiting: nothing waits anywhere
                assert await db(transitions, engine) == [
                    ("7", "online", False),
                    ("7", "offline", False),
                    ("7", "online", False),
                ]
                [covered] = await db(coverage_rows, engine)
                assert covered.ended_at is not None
                assert not Spool(tmp_path / "spool").segments()

    asyncio.run(scenario())


def test_bad_flags_are_one_line_errors(cli_env):
    result = subprocess.run(
        [sys.executable, "-m", "presence_core", "listen", "--server", "ftp://nowhere"],
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "server URL" in result.stderr


def test_server_not_up_yet_then_restarted_while_the_database_is_down(own_postgres, tmp_path):
    """Both faults at once: the reconcile after the server's restart runs on the
    listener's memory (the database is down) and its rows wait in the spool."""
    server, pg_port, engine = own_postgres
    port = free_port()

    async def scenario():
        listener = make_listener(engine, f"http://127.0.0.1:{port}", tmp_path)
        task = asyncio.create_task(listener.run())
        await async_wait_for(lambda: listener.stats.connect_failures >= 2, 10, what="retries")
        with guide_server(port) as first:  # the server comes up: the listener gets in
            await async_wait_for(lambda: listener.stats.reconciles >= 1, 15, what="connect")
            tab = await User(first.url).connect()
            await tab.online(1, "Ann")
            await wait_rows(engine, [("1", "online", False)])
            await asyncio.to_thread(server.stop)
            first.process.kill()
            await async_wait_for(lambda: not listener.stats.connected, 10)
            await tab.close()
        with guide_server(port):
            await async_wait_for(lambda: listener.stats.reconciles >= 2, 20, what="reconcile")
            assert listener.view("1").status == "offline"  # decided from memory
            assert listener.spooling
            await asyncio.to_thread(restart_on_same_port, server, pg_port)
            await wait_rows(engine, [("1", "online", False), ("1", "offline", True)], 20)
            listener.stop()
            await asyncio.wait_for(task, 20)
        gap, after = await db(coverage_rows, engine)
        [(offline_at,)] = [
            (r.occurred_at,) for r in await db(transition_rows, engine) if r.inferred
        ]
        assert offline_at == gap.ended_at and after.ended_at is not None

    asyncio.run(scenario())


FROZEN_SERVER = """
import socket, sys
import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=1, ping_timeout=1)
app = web.Application()
sio.attach(app)
online = sys.argv[2]

@sio.on("getOnlineUsers")
async def answer(sid, *args):
    users = [{"userId": 1, "status": "online", "lastSeen": online}] if online != "-" else []
    await sio.emit("onlineUsersList", users, to=sid)

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
web.run_app(app, sock=sock, print=None)
"""


def start_python_server(port: int, online: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", FROZEN_SERVER, str(port), online],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().startswith("listening")
    return process


def test_silently_dead_server_gap_starts_when_last_heard(engine, tmp_path):
    """A server frozen with SIGSTOP sends nothing, not even pings: the listener notices
    only after the ping timeout, but the gap starts when it last heard from it."""
    port = free_port()
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

    async def scenario():
        frozen = start_python_server(port, since)
        listener = make_listener(engine, f"http://127.0.0.1:{port}", tmp_path)
        task = asyncio.create_task(listener.run())
        try:
            await wait_rows(engine, [("1", "online", False)])
            frozen.send_signal(signal.SIGSTOP)
            stopped_at = datetime.now(UTC)
            await async_wait_for(lambda: not listener.stats.connected, 15, what="timeout")
            noticed_at = datetime.now(UTC)
            frozen.kill()
            frozen.wait()
            fresh = start_python_server(port, "-")  # restarted: nobody online
            try:
                await wait_rows(engine, [("1", "online", False), ("1", "offline", True)], 20)
            finally:
                listener.stop()
                await asyncio.wait_for(task, 20)
                fresh.kill()
                fresh.wait()
        finally:
            if frozen.poll() is None:
                frozen.kill()
        gap = (await db(coverage_rows, engine))[0]
        # last heard: within a ping interval (1 s) before the freeze, well before the notice
        assert stopped_at - timedelta(seconds=1.5) <= gap.ended_at <= stopped_at
        assert noticed_at - gap.ended_at >= timedelta(seconds=1)
        [offline] = [r for r in await db(transition_rows, engine) if r.inferred]
        assert offline.occurred_at == gap.ended_at

    asyncio.run(scenario())


# --- the writer process dies -------------------------------------------------------------


def test_writer_process_killed_mid_stream_loses_nothing(engine, tmp_path):
    async def scenario():
        with guide_server() as node:
            async with (
                listening(engine, node.url, tmp_path) as listener,
                users(node.url) as [tab],
            ):
                await tab.online(1, "Ann")
                await wait_rows(engine, [("1", "online", False)])
                first = listener.pipeline.writer_pid
                os.kill(first, signal.SIGKILL)
                await tab.online(2, "Bob")
                await tab.offline(1)
                await tab.online(3, "Cy")
                await wait_rows(
                    engine,
                    [
                        ("1", "online", False),
                        ("1", "offline", False),
                        ("2", "online", False),
                        ("3", "online", False),
                    ],
                )
                # the batch the dead writer could not take was spooled, then replayed
                assert listener.stats.spooled >= 1
                await async_wait_for(lambda: not listener.spooling, 10, what="direct writes")
                await tab.offline(2)
                await wait_rows(
                    engine,
                    [
                        ("1", "online", False),
                        ("1", "offline", False),
                        ("2", "online", False),
                        ("2", "offline", False),
                        ("3", "online", False),
                    ],
                )
                second = listener.pipeline.writer_pid
                assert second is not None and second != first  # a new writer took over
                rows = {(r.user_id, r.status): r for r in await db(transition_rows, engine)}
                assert rows["1", "offline"].occurred_at == await tab.broadcast_time(1, "offline")

    asyncio.run(scenario())


def test_a_writer_that_cannot_start_leaves_writing_to_a_thread(engine, tmp_path, monkeypatch):
    # a broken environment for new processes: every writer process dies at once
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")

    async def scenario():
        with guide_server() as node:
            async with (
                listening(engine, node.url, tmp_path) as listener,
                users(node.url) as [tab],
            ):
                expected: list[tuple] = []
                # each change reaches a writer (or the spool, replayed from a thread)
                while listener.pipeline.writes_in_process:
                    assert len(expected) < 10, "still trying writer processes"
                    if len(expected) % 2 == 0:
                        await tab.online(3, "Cy")
                        expected.append(("3", "online", False))
                    else:
                        await tab.offline(3)
                        expected.append(("3", "offline", False))
                    await wait_rows(engine, expected)
                assert listener.stats.writers_lost == 3
                await tab.online(4, "Dee")
                await wait_rows(engine, [*expected, ("4", "online", False)])
                assert listener.stats.writers_lost == 3  # written in a thread, no more tries
            assert not listener.spool.segments()  # its last records too: nothing left behind

    asyncio.run(scenario())
