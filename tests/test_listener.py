"""The listener against real servers over loopback and a real PostgreSQL.

Servers: the guide's Node backend (tests/node/guide_server.js), our own
``presence serve`` (tests/server_harness), and a scripted python-socketio server
for payloads no honest server sends (bad events, odd clocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from presence_core.database.records import record_from_dict, record_to_dict
from presence_core.database.storage import Sighting, Transition
from presence_core.listener import Listener, UserTracker, UserView, event_time, plan_reconcile
from presence_core.protocol import OnlineUser, ProtocolError, parse_last_seen
from tests.nodejs import guide_server, node_available
from tests.waiting import async_wait_for

needs_node = pytest.mark.skipif(not node_available(), reason="Node fixtures not installed")

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# --- helpers shared with test_listener_faults -------------------------------------------


def transitions(engine: Engine) -> list[tuple]:
    """``(user_id, status, inferred)`` of every stored transition, by user then time."""
    return [(r.user_id, r.status, r.inferred) for r in transition_rows(engine)]


def transition_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "select user_id, status, occurred_at, received_at, inferred, reason, source"
                " from presence_transitions order by user_id, occurred_at"
            )
        ).all()


def coverage_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text("select listener, started_at, ended_at from presence_coverage order by started_at")
        ).all()


def user_row(engine: Engine, user_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("select * from presence_users where user_id = :u"), {"u": user_id}
        ).one_or_none()


async def db(fn, *args):
    """Run a blocking query off the event loop (the listener shares the loop)."""
    return await asyncio.to_thread(fn, *args)


async def wait_rows(engine: Engine, expected: list[tuple], timeout: float = 15) -> None:
    async def done() -> bool:
        return await db(transitions, engine) == expected

    try:
        await async_wait_for(done, timeout, interval=0.05, what=f"transitions {expected}")
    except AssertionError:
        raise AssertionError(
            f"expected {expected}, stored {await db(transitions, engine)}"
        ) from None


async def past_millisecond_of(moment: datetime) -> None:
    """Wait until this machine's clock (which the guide's Node server reads too) has
    left ``moment``'s millisecond, so that the next change is dated after it."""
    await async_wait_for(
        lambda: datetime.now(UTC) >= moment + timedelta(milliseconds=1),
        1,
        interval=0.001,
        what=f"the clock past {moment.isoformat()}",
    )


class User:
    """A person's browser tab: a python-socketio client speaking the guide's protocol."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.seen: list[dict] = []  # userStatusChanged broadcasts, to compare times
        self.sio.on("userStatusChanged", self.seen.append)

    async def connect(self) -> User:
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=10)
        return self

    async def online(self, user_id: Any, name: str | None = None, kind: str = "agent") -> None:
        await self.sio.emit("userOnline", {"userId": user_id, "userType": kind, "userName": name})

    async def offline(self, user_id: Any) -> None:
        await self.sio.emit("userOffline", {"userId": user_id})

    async def set_status(self, user_id: Any, status: Any) -> None:
        """The Node fixture's test hook: broadcast any status for any user."""
        await self.sio.emit("__set_status", {"userId": user_id, "status": status})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()

    async def broadcast_time(self, user_id: Any, status: str) -> datetime:
        """``lastSeen`` of the broadcast of ``user_id`` going ``status`` (waits for it)."""

        def find():
            for p in self.seen:
                if p.get("userId") == user_id and p.get("status") == status:
                    return p
            return None

        payload = await async_wait_for(find, 10, what=f"broadcast {user_id} {status}")
        return parse_last_seen(payload["lastSeen"])


class ScriptedServer:
    """A python-socketio server that sends whatever a test tells it to."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncServer(async_mode="aiohttp", max_http_buffer_size=10_000_000)
        self.app = web.Application()
        self.sio.attach(self.app)
        self.online: list[Any] = []  # the onlineUsersList answer
        self.runner: web.AppRunner | None = None
        self.port = 0

        @self.sio.on("getOnlineUsers")
        async def _answer(sid, *_args):
            await self.sio.emit("onlineUsersList", self.online, to=sid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ScriptedServer:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self.runner, sock)
        await site.start()
        return self

    async def send(self, *payload: Any, event: str = "userStatusChanged") -> None:
        await self.sio.emit(event, payload[0] if len(payload) == 1 else payload)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def make_listener(engine: Engine, url: str, tmp_path: Path, **options: Any) -> Listener:
    options.setdefault("name", "test-listener")
    options.setdefault("spool_dir", tmp_path / "spool")
    options.setdefault("flush_interval", 0.05)
    options.setdefault("heartbeat_interval", 0.2)
    options.setdefault("names_interval", 0.1)
    options.setdefault("retry_cap", 0.3)
    options.setdefault("db_retry", 0.2)
    return Listener(engine, url, **options)


@contextlib.asynccontextmanager
async def listening(
    engine: Engine, url: str, tmp_path: Path, **options: Any
) -> AsyncIterator[Listener]:
    """A running listener that has reconciled once; stopped (and awaited) afterwards."""
    listener = make_listener(engine, url, tmp_path, **options)
    task = asyncio.create_task(listener.run())
    try:
        await async_wait_for(
            lambda: listener.stats.reconciles >= 1 or task.done(), 15, what="first reconcile"
        )
        assert not task.done(), task.exception()
        yield listener
    finally:
        listener.stop()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def users(url: str, count: int = 1) -> AsyncIterator[list[User]]:
    tabs = [await User(url).connect() for _ in range(count)]
    try:
        yield tabs
    finally:
        for tab in tabs:
            await tab.close()


@pytest.fixture
def node():
    if not node_available():
        pytest.skip("Node fixtures not installed")
    with guide_server() as server:
        yield server


# --- pure parts -------------------------------------------------------------------------


def test_clock_rule():
    received = T0
    assert event_time(T0 - timedelta(seconds=3), None, received) == (
        T0 - timedelta(seconds=3),
        None,
    )
    assert event_time(T0 + timedelta(seconds=5), None, received)[1] is None  # 5 s ahead is fine
    at, why = event_time(T0 + timedelta(seconds=6), None, received)
    assert at == received and "6.0 s ahead" in why
    at, why = event_time(None, "missing", received)
    assert at == received and "missing" in why
    at, why = event_time(None, "unparseable", received)
    assert at == received and "unparseable" in why
    at, why = event_time(T0 - timedelta(days=2), None, received)
    assert at == received and "over a day old" in why


def test_reconcile_plan():
    gap, back = T0, T0 + timedelta(minutes=10)
    state = {
        "stays": UserView("online", T0 - timedelta(hours=1), T0),
        "left": UserView("online", T0 - timedelta(hours=1), T0),
        "late": UserView("away", T0 + timedelta(seconds=2), T0),  # skewed: began after the gap
        "gone": UserView("offline", T0 - timedelta(hours=2), T0),
    }
    snapshot = [
        OnlineUser("stays", "online", T0 - timedelta(hours=1), user_name="Stay"),
        OnlineUser("came", "online", T0 + timedelta(minutes=4), user_name="Came"),
        OnlineUser("old", "online", T0 - timedelta(hours=3)),  # lastSeen before the gap
        OnlineUser("gone", "online", None, last_seen_raw=None),
        OnlineUser("came", "online", T0 + timedelta(minutes=5)),  # duplicate entry: ignored
        # our server's statusSince says when the status began; lastSeen is the latest life
        OnlineUser(
            "since", "busy", T0 + timedelta(minutes=9), status_since=T0 + timedelta(minutes=2)
        ),
    ]
    rows = plan_reconcile(state, snapshot, gap_start=gap, reconnect_at=back, received_at=back)
    sightings = [r for r in rows if isinstance(r, Sighting)]
    moves = {r.user_id: r for r in rows if isinstance(r, Transition)}
    assert [s.user_id for s in sightings] == ["stays"] and sightings[0].user_name == "Stay"
    assert set(moves) == {"came", "old", "gone", "left", "late", "since"}
    assert (moves["since"].status, moves["since"].occurred_at) == (
        "busy",
        T0 + timedelta(minutes=2),
    )
    assert moves["came"].occurred_at == T0 + timedelta(minutes=4)
    assert (moves["came"].reason, moves["came"].inferred, moves["came"].user_name) == (
        "reconcile",
        False,
        "Came",
    )
    assert moves["old"].occurred_at == back and "before the gap" in moves["old"].reason
    assert moves["gone"].occurred_at == back and "missing" in moves["gone"].reason
    assert (moves["left"].status, moves["left"].occurred_at, moves["left"].inferred) == (
        "offline",
        gap,
        True,
    )
    # never before the status it ends
    assert moves["late"].occurred_at == T0 + timedelta(seconds=2, milliseconds=1)


def test_reconcile_without_earlier_coverage_uses_last_sign_of_life():
    state = {"u": UserView("online", T0, T0 + timedelta(minutes=3))}
    rows = plan_reconcile(
        state,
        [],
        gap_start=None,
        reconnect_at=T0 + timedelta(hours=1),
        received_at=T0 + timedelta(hours=1),
    )
    assert [(r.status, r.occurred_at, r.inferred) for r in rows] == [
        ("offline", T0 + timedelta(minutes=3), True)
    ]


def test_records_survive_the_spool_format():
    records = [
        Transition("1", "online", T0, T0, False, "why", "src", "agent", "Ann", "blue"),
        Sighting("1", T0, None, "Ann", None),
    ]
    assert [record_from_dict(record_to_dict(r)) for r in records] == records


# --- against the guide's Node server ----------------------------------------------------


@needs_node
@pytest.mark.parametrize("writer", ["process", "thread"])
def test_live_changes_numeric_and_string_ids(node, engine, tmp_path, writer):
    async def scenario():
        async with (
            listening(engine, node.url, tmp_path, writer=writer) as listener,
            users(node.url) as [tab],
        ):
            assert listener.pipeline.writes_in_process == (writer == "process")
            await tab.online(123, "Ann")
            await tab.online("u-7", "Bob", "admin")
            # the guide's server dates changes by its clock in whole milliseconds: two
            # changes of one user in the same millisecond would share a lastSeen, and the
            # listener rightly moves the second one on (the same-millisecond test below)
            await past_millisecond_of(await tab.broadcast_time(123, "online"))
            await tab.offline(123)
            await wait_rows(
                engine,
                [("123", "online", False), ("123", "offline", False), ("u-7", "online", False)],
            )
            rows = await db(transition_rows, engine)
            assert [r.occurred_at for r in rows] == [
                await tab.broadcast_time(123, "online"),
                await tab.broadcast_time(123, "offline"),
                await tab.broadcast_time("u-7", "online"),
            ]
            assert all(r.source == "test-listener" and r.reason is None for r in rows)
            # the guide's broadcasts carry no names: they come from the online list
            await async_wait_for(
                lambda: db(lambda: getattr(user_row(engine, "u-7"), "user_name", None) == "Bob"),
                10,
                what="names from getOnlineUsers",
            )
            bob = await db(user_row, engine, "u-7")
            assert (bob.user_type, bob.status) == ("admin", "online")
            assert listener.stats.rejected == 0

    asyncio.run(scenario())


@needs_node
def test_listener_started_late_takes_the_online_list(node, engine, tmp_path):
    async def scenario():
        async with users(node.url) as [tab]:
            await tab.online(1, "Ann")
            await tab.online(2, "Bob")
            came = {
                1: await tab.broadcast_time(1, "online"),
                2: await tab.broadcast_time(2, "online"),
            }
            async with listening(engine, node.url, tmp_path) as listener:
                await wait_rows(engine, [("1", "online", False), ("2", "online", False)])
                rows = await db(transition_rows, engine)
                assert [r.occurred_at for r in rows] == [came[1], came[2]]
                assert {r.reason for r in rows} == {"reconcile"}
                assert (await db(user_row, engine, "2")).user_name == "Bob"
                await tab.offline(1)
                await wait_rows(
                    engine,
                    [("1", "online", False), ("1", "offline", False), ("2", "online", False)],
                )
                # the guide's server ignores the version-2 subscription: the guide's protocol
                assert listener.stats.protocol == 1 and listener.stats.diffs_received == 0

    asyncio.run(scenario())


@needs_node
def test_stopped_listener_reconciles_its_gap_on_restart(node, engine, tmp_path):
    async def scenario():
        async with users(node.url) as [tab]:
            await tab.online("stays", "Stay")
            await tab.online("leaves", "Leave")
            async with listening(engine, node.url, tmp_path):
                await wait_rows(engine, [("leaves", "online", False), ("stays", "online", False)])
            [first] = await db(coverage_rows, engine)
            assert first.ended_at is not None
            # while nobody listens
            await tab.offline("leaves")
            await tab.online("arrives", "Arrive")
            arrived = await tab.broadcast_time("arrives", "online")
            await tab.online("flits")
            await tab.offline("flits")  # came and went unseen: nothing to know
            async with listening(engine, node.url, tmp_path) as listener:
                await wait_rows(
                    engine,
                    [
                        ("arrives", "online", False),
                        ("leaves", "online", False),
                        ("leaves", "offline", True),
                        ("stays", "online", False),
                    ],
                )
                assert listener.view("leaves").status == "offline"
            rows = {(r.user_id, r.status): r for r in await db(transition_rows, engine)}
            # offline at the start of the gap: never overstate presence
            assert rows["leaves", "offline"].occurred_at == first.ended_at
            assert rows["leaves", "offline"].reason.startswith("reconcile")
            assert rows["arrives", "online"].occurred_at == arrived
            covered = await db(coverage_rows, engine)
            assert len(covered) == 2 and all(c.ended_at is not None for c in covered)
            assert covered[1].started_at > first.ended_at

    asyncio.run(scenario())


@needs_node
def test_multi_tab_user_and_repeats_make_no_transitions(node, engine, tmp_path):
    async def scenario():
        async with listening(engine, node.url, tmp_path) as listener:
            async with users(node.url, 3) as [first_tab, second_tab, hook]:
                await first_tab.online(5, "Eve")
                await hook.broadcast_time(5, "online")  # the tabs' order is now certain
                await second_tab.online(5, "Eve")  # a second tab: the same status again
                await async_wait_for(
                    lambda: sum(p.get("userId") == 5 for p in hook.seen) == 2, 10, what="2nd tab"
                )
                await wait_rows(engine, [("5", "online", False)])
                before = (await db(user_row, engine, "5")).last_seen
                for _ in range(3):  # heartbeats: repeated statuses
                    await hook.set_status(5, "online")
                await async_wait_for(
                    lambda: listener.stats.events_received >= 5, 10, what="the repeats"
                )
                await async_wait_for(
                    lambda: db(lambda: user_row(engine, "5").last_seen > before),
                    10,
                    what="last_seen advanced by the repeats",
                )
                await hook.set_status(5, "away")
                await hook.set_status(5, "away")
                await hook.set_status(5, "online")
                await first_tab.close()  # the guide's server ignores the older tab leaving
                await hook.set_status(6, "offline")  # offline for a user never seen: no row
                await wait_rows(
                    engine, [("5", "online", False), ("5", "away", False), ("5", "online", False)]
                )
                await second_tab.close()
                await wait_rows(
                    engine,
                    [
                        ("5", "online", False),
                        ("5", "away", False),
                        ("5", "online", False),
                        ("5", "offline", False),
                    ],
                )
            assert listener.stats.rejected == 0

    asyncio.run(scenario())


# --- against a scripted server: bad events and clocks -------------------------------------


def test_bad_events_are_counted_never_written(engine, tmp_path):
    async def scenario():
        server = await ScriptedServer().start()
        try:
            async with listening(engine, server.url, tmp_path) as listener:
                now = datetime.now(UTC)
                bad = [
                    {"status": "online", "lastSeen": now.isoformat()},  # no userId
                    {"userId": None, "status": "online"},
                    {"userId": [1], "status": "online"},
                    {"userId": True, "status": "online"},
                    {"userId": "x" * 100_000, "status": "online"},  # a 100 kB id
                    {"userId": "a\x00b", "status": "online"},
                    {"userId": 1},  # no status
                    {"userId": 1, "status": 5},
                    {"userId": 1, "status": ""},
                    {"userId": 1, "status": "x" * 1000},
                    "online",
                    None,
                    [1, 2, 3],
                ]
                for payload in bad:
                    await server.send(payload)
                await server.send({"userId": 1, "status": "online"}, {"extra": "argument"})
                await server.send("unknownEvent", event="somethingElse")
                # a huge but valid event: the name is cut, the event kept
                await server.send(
                    {
                        "userId": 9,
                        "status": "online",
                        "lastSeen": now.isoformat(),
                        "userName": "N" * 1_000_000,
                    }
                )
                await server.send({"userId": 2, "status": "online", "lastSeen": now.isoformat()})
                await wait_rows(engine, [("2", "online", False), ("9", "online", False)])
                assert listener.stats.rejected == len(bad) + 1
                assert len((await db(user_row, engine, "9")).user_name) == 256
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_unstorable_text_never_reaches_the_database(engine, tmp_path):
    """Issue 12 point 2, what a listener receives: a NUL or a lone surrogate in a
    userId refuses the event; in a name, type or team it drops that name and keeps
    the event. Either way it is counted, and no row is ever refused by PostgreSQL."""

    async def scenario():
        server = await ScriptedServer().start()
        now = datetime.now(UTC) - timedelta(seconds=1)
        seen = now.isoformat()
        server.online = [  # the reconcile's online list
            {"userId": "o", "status": "online", "lastSeen": seen, "userName": "Ol\x00ga"},
        ]
        try:
            async with listening(engine, server.url, tmp_path) as listener:
                server.online = []  # reconciled; a later request (for names) gets nobody
                for user_id in ("nul\x00id", "half\ud800id"):
                    await server.send({"userId": user_id, "status": "online", "lastSeen": seen})
                await server.send(
                    {
                        "userId": "n",
                        "status": "online",
                        "lastSeen": seen,
                        "userName": "Nu\x00ll",
                        "userType": "\udfffagent",
                        "team": "blue",
                    }
                )
                await wait_rows(engine, [("n", "online", False), ("o", "online", False)])
                # the two ids: events refused, counted; no row refused by PostgreSQL on top
                assert listener.stats.rejected == 2
                assert listener.stats.names_dropped == 3  # Olga's name, n's name and type
                named = await db(user_row, engine, "n")
                assert (named.user_name, named.user_type, named.team) == (None, None, "blue")
                assert (await db(user_row, engine, "o")).user_name is None
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_clock_rule_on_the_wire(engine, tmp_path):
    async def scenario():
        server = await ScriptedServer().start()
        try:
            async with listening(engine, server.url, tmp_path):
                now = datetime.now(UTC)
                await server.send({"userId": "a", "status": "online"})  # no lastSeen
                await server.send({"userId": "b", "status": "online", "lastSeen": "yesterday"})
                ahead = (now + timedelta(hours=1)).isoformat()
                await server.send({"userId": "c", "status": "online", "lastSeen": ahead})
                epoch_ms = int((now - timedelta(seconds=1)).timestamp() * 1000)
                await server.send({"userId": "d", "status": "online", "lastSeen": epoch_ms})
                await server.send(
                    {
                        "userId": "e",
                        "status": "busy",
                        "lastSeen": now.isoformat(),
                        "reason": "userStatus",
                        "userName": "Eve",
                        "team": "blue",
                    }
                )
                await async_wait_for(lambda: db(lambda: len(transitions(engine)) == 5), 10)
                rows = {r.user_id: r for r in await db(transition_rows, engine)}
                for uid, words in (("a", "missing"), ("b", "unparseable"), ("c", "ahead")):
                    assert rows[uid].occurred_at == rows[uid].received_at
                    assert words in rows[uid].reason and "received_at used" in rows[uid].reason
                assert (
                    rows["d"].occurred_at == parse_last_seen(epoch_ms) and rows["d"].reason is None
                )
                assert rows["e"].reason == "userStatus" and rows["e"].status == "busy"
                eve = await db(user_row, engine, "e")
                assert (eve.user_name, eve.team, eve.status) == ("Eve", "blue", "busy")
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_same_millisecond_changes_keep_their_order(engine, tmp_path):
    """Two changes of one user with the same lastSeen (the guide's server dates by the
    millisecond): the second is moved one millisecond on, the wire's resolution, and
    says so; a later change keeps its own time."""

    async def scenario():
        server = await ScriptedServer().start()
        at = datetime.now(UTC).replace(microsecond=123_000) - timedelta(seconds=2)
        wire = at.isoformat().replace("+00:00", "Z")
        try:
            async with listening(engine, server.url, tmp_path):
                await server.send({"userId": 5, "status": "online", "lastSeen": wire})
                await server.send({"userId": 5, "status": "away", "lastSeen": wire})
                later = (at + timedelta(seconds=1)).isoformat()
                await server.send({"userId": 5, "status": "offline", "lastSeen": later})
                await wait_rows(
                    engine, [("5", "online", False), ("5", "away", False), ("5", "offline", False)]
                )
                rows = await db(transition_rows, engine)
                assert [r.occurred_at for r in rows] == [
                    at,
                    at + timedelta(milliseconds=1),
                    at + timedelta(seconds=1),
                ]
                assert [r.reason for r in rows] == [
                    None,
                    "moved after the previous transition",
                    None,
                ]
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_bad_online_list_entries_are_skipped(engine, tmp_path):
    async def scenario():
        server = await ScriptedServer().start()
        now = datetime.now(UTC) - timedelta(seconds=1)
        server.online = [
            {"userId": 1, "status": "online", "lastSeen": now.isoformat(), "userName": "Ann"},
            {"status": "online"},
            "junk",
            {"userId": {"a": 1}},
        ]
        try:
            async with listening(engine, server.url, tmp_path) as listener:
                await wait_rows(engine, [("1", "online", False)])
                assert listener.stats.rejected == 3
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_heartbeat_row_and_metrics(engine, tmp_path):
    async def scenario():
        server = await ScriptedServer().start()
        try:
            async with listening(engine, server.url, tmp_path, name="hb") as listener:
                await server.send({"userId": 1, "status": "online"})
                await wait_rows(engine, [("1", "online", False)])

                def beat():
                    with engine.connect() as conn:
                        return conn.execute(
                            text("select * from presence_listeners where listener = 'hb'")
                        ).one_or_none()

                row = await async_wait_for(
                    lambda: db(lambda: (r := beat()) is not None and r.events_received == 1 and r),
                    10,
                    what="heartbeat with the event counted",
                )
                assert row.connected and row.stopped_at is None and row.server_url == server.url
                from prometheus_client import generate_latest

                metrics = generate_latest(listener.registry).decode()
                for name in (
                    "events_received_total",
                    "transitions_written_total",
                    "spooled_total",
                    "replayed_total",
                    "rejected_total",
                    "reconnects_total",
                    "last_event_age_seconds",
                    "queue_depth",
                ):
                    assert f"presence_listener_{name}" in metrics
                assert 'presence_listener_events_received_total{listener="hb"} 1.0' in metrics
            row = await db(beat)
            assert not row.connected and row.stopped_at is not None
        finally:
            await server.stop()

    asyncio.run(scenario())


# --- against our own server ---------------------------------------------------------------


def test_against_our_server(engine, tmp_path):
    from tests.server_harness import running_server

    with running_server(None) as srv:
        ann = srv.client()
        ann.emit("userOnline", {"userId": 42, "userType": "agent", "userName": "Ann"})
        ann.wait_change(42, "online")

        async def scenario():
            async with listening(engine, srv.url, tmp_path) as listener:
                await wait_rows(engine, [("42", "online", False)])
                bob = await User(srv.url).connect()
                bob_tab2 = await User(srv.url).connect()
                await bob.online("bob", "Bob")
                await bob_tab2.online("bob", "Bob")  # a second tab
                await async_wait_for(
                    lambda: db(lambda: srv.snapshot().get("bob", ("", 0))[1] == 2),
                    10,
                    what="both tabs counted",
                )
                await bob.sio.emit("userStatus", {"userId": "bob", "status": "away"})
                await bob.sio.emit("userHeartbeat", {"userId": "bob"})
                await bob.broadcast_time("bob", "away")
                await bob.close()
                await bob_tab2.offline("bob")
                await wait_rows(
                    engine,
                    [
                        ("42", "online", False),
                        ("bob", "online", False),
                        ("bob", "away", False),
                        ("bob", "offline", False),
                    ],
                )
                await bob_tab2.close()
                assert listener.stats.rejected == 0
                assert (await db(user_row, engine, "bob")).user_name == "Bob"
                # our server speaks version 2: the listener subscribed and logged from diffs
                assert listener.stats.protocol == 2 and listener.stats.diffs_received >= 1
                assert listener.stats.events_received == 3  # bob online, away, offline
                health = await db(srv.server.health)
                assert health["v2_connections"] == 1
                assert listener.stats.diff_gaps == 0 and listener.stats.reconciles == 1

        asyncio.run(scenario())


def test_a_missed_diff_cuts_coverage_and_reconciles_at_once(engine, tmp_path):
    """A diff lost on the way (dropped at the listener's socket: TCP never loses one
    for real, so the fault is injected where it would show) is noticed at the next
    diff's seq: the coverage ends at the last complete diff, the listener
    re-subscribes without reconnecting, and the reconcile writes what was missed."""
    from tests.server_harness import running_server

    with running_server(None, diff_interval=0.05) as srv:

        async def scenario():
            async with listening(engine, srv.url, tmp_path) as listener:
                arrive = listener.connection.arrive
                dropped: list[object] = []

                def lossy(kind, payload, at):
                    if kind == "diff" and not dropped:
                        dropped.append(payload)  # the first diff never arrives
                        return
                    arrive(kind, payload, at)

                listener.connection.arrive = lossy
                ann = await User(srv.url).connect()
                await ann.online("ann", "Ann")
                await async_wait_for(lambda: dropped, 10, what="the first diff, dropped")
                bob = await User(srv.url).connect()
                await bob.online("bob", "Bob")
                await wait_rows(engine, [("ann", "online", False), ("bob", "online", False)])
                assert listener.stats.diff_gaps == 1
                assert listener.stats.reconciles == 2 and listener.stats.reconnects == 0
                rows = {r.user_id: r for r in await db(transition_rows, engine)}
                assert rows["ann"].reason == "reconcile"  # found by the reconcile, not a diff
                assert rows["bob"].reason == "userOnline"
                covered = await db(coverage_rows, engine)
                assert len(covered) == 2 and covered[0].ended_at <= covered[1].started_at
                # exactly once from here on: a later change is one row
                await ann.offline("ann")
                await wait_rows(
                    engine,
                    [("ann", "online", False), ("ann", "offline", False), ("bob", "online", False)],
                )
                await ann.close()
                await bob.close()

        asyncio.run(scenario())


def test_our_server_with_tokens_and_a_gap(engine, tmp_path):
    from presence_core.server import auth
    from presence_core.status import parse_timestamp
    from tests.server_harness import running_server

    secret = "listener-test-secret-0123456789"
    observer = auth.issue_token(secret, observer=True)
    with running_server(None, auth_secret=secret) as srv:
        ann = srv.client(auth={"token": auth.issue_token(secret, user_id="ann")})
        ann.emit("userOnline", {"userId": "ann", "userName": "Ann"})
        ann.wait_change("ann", "online")

        async def first_run():
            async with listening(engine, srv.url, tmp_path, token=observer):
                await wait_rows(engine, [("ann", "online", False)])

        asyncio.run(first_run())
        [first] = coverage_rows(engine)
        bob = srv.client(auth={"token": auth.issue_token(secret, user_id="bob")})
        bob.emit("userOnline", {"userId": "bob", "userName": "Bob"})
        ann.emit("userOffline", {"userId": "ann"})
        left = ann.wait_change("ann", "offline")

        async def second_run():
            async with listening(engine, srv.url, tmp_path, token=observer):
                await wait_rows(
                    engine,
                    [("ann", "online", False), ("ann", "offline", False), ("bob", "online", False)],
                )

        asyncio.run(second_run())
        rows = {(r.user_id, r.status): r for r in transition_rows(engine)}
        # our server remembers when Ann left (getUsersStatus, asked with the observer's
        # token): the offline is at that moment, not inferred at the gap's start
        assert rows["ann", "offline"].occurred_at == parse_timestamp(left["lastSeen"])
        assert rows["ann", "offline"].occurred_at > first.ended_at
        assert user_row(engine, "bob").user_name == "Bob"


def test_without_a_token_our_server_refuses_and_the_listener_keeps_trying(engine, tmp_path):
    from tests.server_harness import running_server

    with running_server(None, auth_secret="listener-test-secret-0123456789") as srv:

        async def scenario():
            listener = make_listener(engine, srv.url, tmp_path)
            task = asyncio.create_task(listener.run())
            await async_wait_for(
                lambda: listener.stats.connect_failures >= 3, 10, what="refused attempts"
            )
            assert not listener.stats.connected and not task.done()
            listener.stop()
            await asyncio.wait_for(task, 10)
            assert coverage_rows(engine) == []

        asyncio.run(scenario())


# --- any payload at all: never a crash, never a junk row ------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_field = _json | st.sampled_from(["online", "offline", "away", "", "2026-03-02T09:00:00Z"])
_payload = st.fixed_dictionaries(
    {},
    optional={
        "userId": _field | st.integers(0, 10**6),
        "status": _field,
        "lastSeen": _field | st.integers(0, 2**45),
        "userName": _field,
        "userType": _field,
        "team": _field,
        "reason": _field,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_payload | _json, min_size=1, max_size=5))
def test_any_payload_is_rejected_or_stored_sanely(payloads):
    tracker = UserTracker()
    received = datetime.now(UTC)
    records, rejected = [], 0
    for payload in payloads:
        # a bad payload is a ProtocolError (counted by the listener), never another error
        try:
            records.append(tracker.status_changed(payload, received, "fuzz"))
        except ProtocolError:
            rejected += 1
    assert len(records) + rejected == len(payloads)
    for record in records:
        assert isinstance(record, (Transition, Sighting))
        assert record.user_id.strip() and len(record.user_id) <= 256
        assert "\x00" not in record.user_id
        at = record.occurred_at if isinstance(record, Transition) else record.last_seen
        assert at.tzinfo is not None
        assert at <= received + timedelta(seconds=5)
        assert at >= received - timedelta(days=1)
        for name in (record.user_name, record.user_type, record.team):
            assert name is None or (len(name) <= 256 and "\x00" not in name)
        if isinstance(record, Transition):
            assert record.status.strip() and len(record.status) <= 64
            assert record.reason is None or "\x00" not in record.reason


# --- the quick path for common events gives what the full parser gives ----------------------

_near_common = st.fixed_dictionaries(
    {
        "userId": st.sampled_from([7, "7", "u-1", " u-1", "", "u\x00", True, 7.0, 10**300]),
        "status": st.sampled_from(
            ["online", "offline", "away", " online", "Online", "", None, ["online"], {}]
        ),
        "lastSeen": st.sampled_from(
            [
                "2026-03-02T09:00:00.123Z",
                "2026-03-02T09:00:00.123+00:00",
                "2026-03-02T11:00:00.123+02:00",
                "2026-03-02T09:00:00.123",
                "2026-03-02T09:00:10Z",  # ahead of the receiving clock
                "2026-02-01T09:00:00Z",  # over a day old
                "yesterday",
                1772442000123,
                None,
            ]
        ),
    },
    optional={
        "userName": st.sampled_from(["Ann", " Bob ", "", None, 5]),
        "team": st.sampled_from(["ops", None]),
        "reason": st.sampled_from(["tab closed", "", None, ["x"]]),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_near_common, min_size=1, max_size=8))
def test_quick_path_agrees_with_the_full_parser(payloads):
    received = datetime(2026, 3, 2, 9, 0, 1, tzinfo=UTC)
    quick, full = UserTracker(), UserTracker(quick=False)
    for tracker in (quick, full):
        # known users and statuses, so that the quick path is taken where it can be
        tracker.views = {
            uid: UserView("away", T0 - timedelta(hours=1), T0 - timedelta(hours=1))
            for uid in ("7", "u-1")
        }
    quick.known_statuses.update({"online", "offline", "away"})
    answers: dict[int, list] = {id(quick): [], id(full): []}
    for payload in payloads:
        for tracker in (quick, full):
            # a bad payload is a rejection (ProtocolError), never an internal error
            try:
                answers[id(tracker)].append(tracker.status_changed(payload, received, "same"))
            except ProtocolError as exc:
                answers[id(tracker)].append(str(exc))
    assert answers[id(quick)] == answers[id(full)]
    assert quick.views == full.views
