"""The presence server over real loopback Socket.IO: the guide's flows and what it lacks.

"Nothing else was broadcast" is checked with a barrier, not a pause: the server
handles each connection's events in order, so once a client has its answer to
getOnlineUsers, every broadcast caused before that has already reached it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import socketio
from sqlalchemy import text

from presence_core import protocol
from presence_core.database import storage
from presence_core.server import PresenceServer, ServerOptions, auth
from tests.conftest import free_port
from tests.server_harness import Client, LoopThread, running_server
from tests.waiting import wait_for

SECRET = "test-secret-0123456789"


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_the_guides_flow_online_list_offline_disconnect():
    with running_server() as srv:
        watcher = srv.client()
        alice = srv.client()
        alice.emit("userOnline", {"userId": 123, "userType": "agent", "userName": "John Doe"})
        change = watcher.wait_change(123, "online")
        assert set(change) == {"userId", "status", "lastSeen", "reason"}
        assert isinstance(change["userId"], int)  # a number stays a number
        assert change["lastSeen"].endswith("Z") and len(change["lastSeen"]) == 24
        assert alice.wait_change(123, "online")  # the sender hears it too (broadcast to all)

        [entry] = watcher.online_list()
        assert entry == {
            "userId": 123,
            "status": "online",
            "lastSeen": entry["lastSeen"],
            "userType": "agent",
            "userName": "John Doe",
            "statusSince": change["lastSeen"],  # an extension guide clients ignore
        }
        assert parse(entry["lastSeen"]) >= parse(change["lastSeen"])  # connected: seen now

        alice.emit("userOffline", {"userId": 123})
        watcher.wait_change(123, "offline")
        assert watcher.online_list() == []

        bob = srv.client()
        bob.emit("userOnline", {"userId": "bob", "userType": "admin", "userName": "Bob"})
        watcher.wait_change("bob", "online")
        bob.disconnect()
        offline = watcher.wait_change("bob", "offline")
        assert isinstance(offline["userId"], str)
        assert watcher.online_list() == []


def test_list_says_connected_users_are_seen_now_and_since_when():
    with running_server(grace=0.5) as srv:
        watcher = srv.client()
        client = srv.client()
        client.emit("userOnline", {"userId": 4})
        online = client.wait_change(4, "online")
        # once the clock is a millisecond past the announcement, "seen now" differs from it
        wait_for(
            lambda: datetime.now(UTC) - timedelta(milliseconds=1) > parse(online["lastSeen"]),
            what="the clock past the announcement",
        )
        before = datetime.now(UTC) - timedelta(milliseconds=1)
        [entry] = client.online_list()
        assert entry["statusSince"] == online["lastSeen"]
        assert parse(entry["lastSeen"]) >= before  # connected: seen now
        [parsed] = protocol.parse_online_users([entry])
        assert parsed.status_since == parse(online["lastSeen"])
        # in its grace period, the user is still listed, last seen when the connection went
        client.drop()
        wait_for(lambda: srv.server.health()["connections"] == 1, what="server saw the drop")
        dropped = datetime.now(UTC)
        [ghost] = watcher.online_list()
        assert parse(ghost["lastSeen"]) <= dropped


def test_team_is_an_optional_extension_in_the_list():
    with running_server() as srv:
        client = srv.client()
        client.emit("userOnline", {"userId": 1, "userType": "agent", "userName": "A", "team": "T"})
        client.wait_change(1, "online")
        assert client.online_list()[0]["team"] == "T"


def test_several_tabs_user_goes_offline_only_when_the_last_closes():
    with running_server() as srv:
        watcher = srv.client()
        tab1, tab2 = srv.client(), srv.client()
        tab1.emit("userOnline", {"userId": 5, "userType": "agent", "userName": "E"})
        watcher.wait_change(5, "online")
        tab2.emit("userOnline", {"userId": 5, "userType": "agent", "userName": "E"})
        tab2.online_list()  # barrier: tab2's userOnline handled
        assert srv.snapshot() == {"5": ("online", 2)}

        tab1.disconnect()
        wait_for(lambda: srv.snapshot() == {"5": ("online", 1)}, what="tab1 released after grace")
        watcher.online_list()
        assert watcher.changes(5) == [(5, "online")]  # one online, nothing else

        tab2.emit("userOffline", {"userId": 5})
        watcher.wait_change(5, "offline")
        assert watcher.changes(5) == [(5, "online"), (5, "offline")]


def test_repeated_user_online_is_no_new_broadcast():
    with running_server() as srv:
        watcher = srv.client()
        client = srv.client()
        for _ in range(3):
            client.emit("userOnline", {"userId": 9, "userType": "agent", "userName": "N"})
        client.emit("userOnline", {"userId": "9", "userName": "New name"})  # same user as text
        client.online_list()
        [entry] = watcher.online_list()
        assert watcher.changes() == [(9, "online")]
        assert entry["userName"] == "New name" and entry["userId"] == 9


def test_one_connection_switching_user_takes_the_first_offline():
    with running_server() as srv:
        watcher = srv.client()
        client = srv.client()
        client.emit("userOnline", {"userId": 1})
        client.emit("userOnline", {"userId": 2})
        watcher.wait_change(2, "online")
        assert watcher.changes() == [(1, "online"), (1, "offline"), (2, "online")]


def test_grace_period_a_reload_does_not_flap():
    with running_server(grace=1.0) as srv:
        watcher = srv.client()
        page = srv.client()
        reloaded = srv.client()  # connected ahead, so only its userOnline races the grace
        page.emit("userOnline", {"userId": 7, "userType": "agent", "userName": "R"})
        watcher.wait_change(7, "online")
        page.drop()  # the reload: the old page's connection vanishes
        wait_for(lambda: srv.server.health()["connections"] == 2, what="server saw the drop")
        reloaded.emit("userOnline", {"userId": 7, "userType": "agent", "userName": "R"})
        reloaded.online_list()
        wait_for(lambda: srv.snapshot() == {"7": ("online", 1)}, what="old page's grace over")
        watcher.online_list()
        assert watcher.changes(7) == [(7, "online")]


def test_offline_after_grace_is_backdated_to_the_disconnect():
    with running_server(grace=0.6) as srv:
        watcher = srv.client()
        page = srv.client()
        page.emit("userOnline", {"userId": 8})
        watcher.wait_change(8, "online")
        before = datetime.now(UTC)
        page.drop()
        wait_for(lambda: srv.server.health()["connections"] == 1, what="server saw the drop")
        after = datetime.now(UTC)
        offline = watcher.wait_change(8, "offline")
        received = datetime.now(UTC)
        last_seen = parse(offline["lastSeen"])
        assert before - timedelta(milliseconds=1) <= last_seen <= after
        assert received - last_seen >= timedelta(seconds=0.5)  # it waited out the grace
        assert offline["reason"] == "disconnect"


def test_heartbeat_refreshes_and_silence_times_out_backdated():
    with running_server(heartbeat_timeout=1.0) as srv:
        watcher = srv.client()
        client = srv.client()
        client.emit("userOnline", {"userId": 11})
        watcher.wait_change(11, "online")
        for _ in range(7):  # heartbeats keep it online past the timeout
            client.call("userHeartbeat", {"userId": 11})
            time.sleep(0.2)  # the client's rhythm, not a wait for the server
        assert srv.snapshot() == {"11": ("online", 1)}
        last_beat = datetime.now(UTC)
        assert client.call("userHeartbeat", {"userId": 11}) == {"ok": True}
        offline = watcher.wait_change(11, "offline")
        timed_out_at = datetime.now(UTC)
        last_seen = parse(offline["lastSeen"])
        assert (
            last_beat - timedelta(milliseconds=1) <= last_seen <= last_beat + timedelta(seconds=0.2)
        )
        assert timed_out_at - last_seen >= timedelta(seconds=0.95)
        assert offline["reason"] == "timeout"
        # a sign of life brings it back
        client.call("userHeartbeat", {"userId": 11})
        wait_for(lambda: len(watcher.changes(11)) == 3, what="revived")
        assert watcher.changes(11) == [(11, "online"), (11, "offline"), (11, "online")]


def test_clients_without_heartbeats_are_not_timed_out():
    with running_server(heartbeat_timeout=0.2) as srv:
        client = srv.client()
        client.emit("userOnline", {"userId": 12})
        client.wait_change(12, "online")
        deadline = time.monotonic() + 0.8  # four timeouts: a guide client stays online
        while time.monotonic() < deadline:
            assert srv.snapshot() == {"12": ("online", 1)}
            time.sleep(0.05)


def test_user_status_sets_other_present_statuses():
    with running_server() as srv:
        watcher = srv.client()
        client = srv.client()
        client.emit("userOnline", {"userId": 3, "userType": "agent", "userName": "S"})
        client.emit("userStatus", {"userId": 3, "status": "away"})
        away = watcher.wait_change(3, "away")
        assert set(away) == {"userId", "status", "lastSeen", "reason"}
        assert away["reason"] == "userStatus"
        client.emit("userStatus", {"userId": 3, "status": "away"})  # no change, no broadcast
        client.emit("userStatus", {"userId": 3, "status": "busy"})
        watcher.wait_change(3, "busy")
        assert watcher.online_list()[0]["status"] == "busy"
        client.emit("userOnline", {"userId": 3})  # a new tab does not reset the status
        client.emit("userStatus", {"userId": 3, "status": "online"})
        wait_for(lambda: len(watcher.changes(3)) == 4, what="back online")
        assert watcher.changes(3) == [(3, "online"), (3, "away"), (3, "busy"), (3, "online")]
        err = client.call("userStatus", {"userId": 3, "status": "offline"})
        assert err["ok"] is False and "userOffline" in err["error"]


def test_a_connection_may_change_only_the_user_it_announced():
    with running_server() as srv:
        watcher = srv.client()
        mallory = srv.client()
        victim = srv.client()
        victim.emit("userOnline", {"userId": 1})
        watcher.wait_change(1, "online")
        assert mallory.call("userHeartbeat", {"userId": 1})["ok"] is False  # nothing announced
        mallory.emit("userOnline", {"userId": 2})
        for event, payload in [
            ("userOffline", {"userId": 1}),
            ("userHeartbeat", {"userId": 1}),
            ("userStatus", {"userId": 1, "status": "away"}),
        ]:
            answer = mallory.call(event, payload)
            assert answer["ok"] is False and "'2', not '1'" in answer["error"]
        errors = mallory.received("presenceError")
        wait_for(lambda: len(mallory.received("presenceError")) == 4, what="four refusals")
        assert [e["event"] for e in mallory.received("presenceError")[1:]] == [
            "userOffline",
            "userHeartbeat",
            "userStatus",
        ]
        assert errors is not None
        watcher.online_list()
        assert srv.snapshot() == {"1": ("online", 1), "2": ("online", 1)}
        assert watcher.changes(1) == [(1, "online")]


def test_bad_input_gets_presence_error_and_changes_nothing(engine):
    with running_server(engine) as srv:
        watcher = srv.client()
        client = srv.client()
        bad = [
            ("userOnline", None),
            ("userOnline", "123"),
            ("userOnline", [1, 2]),
            ("userOnline", {"userId": ""}),
            ("userOnline", {"userId": "x" * 100_000}),
            ("userOnline", {"userId": True}),
            ("userOnline", {"userId": 1, "userName": {"a": 1}}),
            ("userStatus", {"userId": 1}),
            ("noSuchEvent", {"userId": 1}),
            ("getOnlineUsers", "please"),
        ]
        for number, (event, payload) in enumerate(bad, 1):
            client.emit_raw(event, payload)
            error = client.wait_error(number)
            assert error["event"] == event and error["message"]
        client.emit_raw("userOnline", {"userId": 1}, {"userId": 2})  # two arguments
        assert "one argument" in client.wait_error(len(bad) + 1)["message"]
        assert watcher.online_list() == []
        assert srv.snapshot() == {}
        assert watcher.changes() == []
        srv.flush()
        assert srv.server.writer.batches == 0  # nothing was written
    assert storage.current_state(engine) == {}


def test_oversized_message_closes_only_the_sender():
    with running_server(max_message_bytes=20_000) as srv:
        watcher = srv.client()
        big = srv.client()
        big.emit_raw("userOnline", {"userId": 1, "userName": "x" * 50_000})
        wait_for(lambda: not big.sio.connected, what="oversized sender disconnected")
        other = srv.client()
        other.emit("userOnline", {"userId": 2})
        watcher.wait_change(2, "online")
        assert [uid for uid, _ in watcher.changes()] == [2]


def test_auth_tokens_give_the_identity():
    with running_server(auth_secret=SECRET) as srv:
        with pytest.raises(socketio.exceptions.ConnectionError):
            srv.client()  # no token
        with pytest.raises(socketio.exceptions.ConnectionError):
            srv.client(auth={"token": auth.issue_token("another-secret-12345", "7")})
        with pytest.raises(socketio.exceptions.ConnectionError):
            srv.client(auth={"token": auth.issue_token(SECRET, "7", ttl=1, now=time.time() - 5)})

        observer = srv.client(auth={"token": auth.issue_token(SECRET, observer=True)})
        seven = srv.client(auth={"token": auth.issue_token(SECRET, 7)})
        refused = seven.call("userOnline", {"userId": 8, "userName": "Not me"})
        assert refused["ok"] is False and "token" in refused["error"]
        seven.emit("userOnline", {"userId": 7, "userType": "agent", "userName": "Seven"})
        observer.wait_change(7, "online")
        assert seven.call("userStatus", {"status": "away"}) == {"ok": True}  # id from token
        observer.wait_change(7, "away")

        no_id = srv.client(auth={"token": auth.issue_token(SECRET, "u-9")})
        no_id.emit_raw("userOnline")
        observer.wait_change("u-9", "online")

        for event, payload in [("userOnline", {"userId": 1}), ("userStatus", {"status": "x"})]:
            answer = observer.call(event, payload)
            assert answer["ok"] is False and "observers" in answer["error"]
        assert {u["userId"] for u in observer.online_list()} == {7, "u-9"}

        expiring = auth.issue_token(SECRET, "short-lived", ttl=0.5)
        brief = srv.client(auth={"token": expiring})
        brief.emit("userOnline", {"userId": "short-lived"})
        observer.wait_change("short-lived", "online")
        deadline = auth.verify_token(expiring, SECRET).expires_at
        wait_for(lambda: time.time() > deadline, what="the token's expiry")
        late = brief.call("userStatus", {"status": "away"})
        assert late["ok"] is False and "expired" in late["error"]


def test_database_is_kept_up_to_date(engine):
    with running_server(engine) as srv:
        client = srv.client()
        client.emit("userOnline", {"userId": 21, "userType": "agent", "userName": "D", "team": "T"})
        online = client.wait_change(21, "online")
        srv.flush()
        state = storage.current_state(engine)["21"]
        assert (state.status, state.user_type, state.user_name, state.team) == (
            "online",
            "agent",
            "D",
            "T",
        )
        assert state.last_seen == parse(online["lastSeen"])

        client.call("userHeartbeat", {"userId": 21})
        first = protocol.now_millis()
        wait_for(lambda: protocol.now_millis() > first, what="the clock past a millisecond")
        client.call("userHeartbeat", {"userId": 21})
        srv.flush()
        assert storage.current_state(engine)["21"].last_seen > state.last_seen

        client.emit("userStatus", {"userId": 21, "status": "away"})
        client.wait_change(21, "away")
        client.emit("userOffline", {"userId": 21})
        offline = client.wait_change(21, "offline")
        srv.flush()
        final = storage.current_state(engine)["21"]
        assert final.status == "offline" and final.last_seen == parse(offline["lastSeen"])
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "select status, occurred_at, reason, source from presence_transitions"
                    " where user_id = '21' order by occurred_at, id"
                )
            ).all()
        assert [(r.status, r.reason, r.source) for r in rows] == [
            ("online", "userOnline", "server"),
            ("away", "userStatus", "server"),
            ("offline", "userOffline", "server"),
        ]
        assert rows[0].occurred_at == parse(online["lastSeen"])


def test_a_hanging_database_never_delays_the_protocol(database_url):
    from presence_core.database import engine as db

    with socket.socket() as blackhole:  # accepts TCP, never answers: a database stuck
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        stuck = db.make_engine(
            database_url.set(host="127.0.0.1", port=blackhole.getsockname()[1]),
            connect_args={"connect_timeout": 3},
        )
        with running_server(stuck) as srv:
            client = srv.client()
            client.emit("userOnline", {"userId": 1})
            client.wait_change(1, "online")
            for _ in range(20):
                client.call("userHeartbeat", {"userId": 1})
            assert len(client.online_list()) == 1
            # every answer came while the writer's first attempt was still hanging
            writer = srv.server.writer
            assert (writer.batches, writer.failures) == (0, 0)
        stuck.dispose()


def test_writer_keeps_failed_batches_and_retries(engine, database_url):
    from presence_core.database import engine as db
    from presence_core.server.writer import DatabaseWriter

    dead = db.make_engine(database_url.set(host="127.0.0.1", port=free_port()))
    writer = DatabaseWriter(dead, interval=0.02)
    writer.start()
    moment = protocol.now_millis()
    writer.add_transition(
        storage.Transition("w1", "online", moment, moment, reason="userOnline", source="server")
    )
    writer.add_sighting(storage.Sighting("w1", moment + timedelta(seconds=1)))
    wait_for(lambda: writer.failures >= 1, what="a failed write")
    assert writer.pending() == 2
    writer.engine = engine  # the database is back
    assert writer.wait_idle(10)
    writer.stop()
    state = storage.current_state(engine)["w1"]
    assert state.status == "online" and state.last_seen == moment + timedelta(seconds=1)
    assert writer.transitions_written == 1
    dead.dispose()


def test_health_endpoint():
    import json
    import urllib.request

    with running_server() as srv:
        client = srv.client()
        client.emit("userOnline", {"userId": 1})
        client.wait_change(1, "online")
        with urllib.request.urlopen(f"{srv.url}/health", timeout=5) as response:
            health = json.load(response)
        assert health["connections"] == 1 and health["users"] == 1


def test_frames_waiting_for_a_client_leave_in_one_write_in_order():
    """One event that makes two broadcasts (a connection switching users: the first
    goes offline, the second comes online) reaches each guide client as two events,
    in order, carried by one write per client (FrameBatcher)."""
    with running_server(grace=0) as srv:
        watchers = [srv.client() for _ in range(5)]
        switcher = srv.client()
        switcher.emit("userOnline", {"userId": "a"})
        for watcher in watchers:
            watcher.wait_change("a", "online")
        before = srv.server.health()
        switcher.emit("userOnline", {"userId": "b"})  # same connection, another user
        for watcher in watchers + [switcher]:
            watcher.wait_change("b", "online")
            assert watcher.changes() == [("a", "online"), ("a", "offline"), ("b", "online")]
        after = srv.server.health()
        frames = after["ws_frames"] - before["ws_frames"]
        writes = after["ws_writes"] - before["ws_writes"]
        assert frames >= 2 * 6  # two broadcasts to six clients, each its own frames
        assert writes <= frames - 6  # ... and at least one write saved for every client


def test_websockets_are_not_compressed_even_when_the_client_offers():
    """Browsers offer permessage-deflate; accepted, every connection would hold zlib
    state for both directions and every broadcast be compressed once per client."""
    import aiohttp

    async def open_compressed(url: str) -> int:
        async with aiohttp.ClientSession() as session:
            ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
            async with session.ws_connect(ws_url, compress=15) as ws:
                assert (await ws.receive_str()).startswith("0")
                return ws.compress

    with running_server() as srv:
        assert srv.loop.run(open_compressed(srv.url)) == 0


def test_stop_in_process_broadcasts_nothing():
    loop = LoopThread()
    server = PresenceServer(None, ServerOptions(grace=0))
    port = loop.run(server.start("127.0.0.1", 0))
    client = Client(loop, f"http://127.0.0.1:{port}")
    client.connect()
    client.emit("userOnline", {"userId": 1})
    client.wait_change(1, "online")
    loop.run(server.stop())
    wait_for(lambda: not client.sio.connected, what="client sees the server go")
    assert client.changes() == [(1, "online")]
    loop.close()


def test_sigterm_is_graceful_and_tells_no_lie(cli_env, engine):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "serve", "--port", str(port), "--grace", "0.2"],
        env={**cli_env, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    loop = LoopThread()
    try:
        line = process.stdout.readline()
        assert line.startswith("presence server listening on"), process.stderr.read()
        url = f"http://127.0.0.1:{port}"
        watcher = Client(loop, url)
        watcher.connect()
        users = [Client(loop, url) for _ in range(3)]
        for number, user in enumerate(users, 1):
            user.connect()
            user.emit("userOnline", {"userId": number, "userType": "agent", "userName": "U"})
        wait_for(lambda: len(watcher.changes()) == 3, what="three online")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, process.stderr.read()
        wait_for(lambda: not watcher.sio.connected, what="watcher sees the server go")
        assert sorted(watcher.changes()) == [(1, "online"), (2, "online"), (3, "online")]
        # nothing pretended they left: the database still has them present
        assert {k: s.status for k, s in storage.current_state(engine).items()} == {
            "1": "online",
            "2": "online",
            "3": "online",
        }
        with engine.connect() as conn:
            statuses = conn.execute(text("select status from presence_transitions")).scalars()
            assert sorted(statuses) == ["online"] * 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        loop.close()


def test_iso_timestamps_match_what_is_stored():
    moment = protocol.now_millis()
    assert parse(protocol.iso_utc(moment)) == moment


def test_serve_command_refuses_a_busy_port_and_a_short_secret(capsys):
    from presence_core import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--no-db", "--port", str(port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert cli.main(["serve", "--no-db", "--port", "0", "--auth-secret", "short"]) == 1
    assert "16 characters" in capsys.readouterr().err


def test_server_rows_and_a_listeners_rows_are_the_same_rows(engine):
    """A listener logging our broadcasts computes the same (user_id, occurred_at, status)
    keys as the server's own rows, so the database holds each transition once."""
    with running_server(engine, grace=0.2) as srv:
        watcher = srv.client()
        tabs = [srv.client() for _ in range(3)]
        for number, tab in enumerate(tabs, 1):
            tab.emit("userOnline", {"userId": number})
        tabs[0].emit("userStatus", {"userId": 1, "status": "away"})
        tabs[1].emit("userOffline", {"userId": 2})
        tabs[2].drop()
        wait_for(lambda: len(watcher.changes()) == 6, what="six transitions")
        srv.flush()
    heard = [protocol.parse_status_changed(p) for p in watcher.received("userStatusChanged")]
    now = protocol.now_millis()
    result = storage.write_batch(
        engine,
        [
            storage.Transition(c.user_id, c.status, c.last_seen, now, source="listener")
            for c in heard
        ],
    )
    assert result.inserted == 0 and result.duplicates == 6
    with engine.connect() as conn:
        rows = conn.execute(text("select source from presence_transitions")).scalars().all()
    assert rows == ["server"] * 6


def test_events_named_like_reserved_ones_are_refused_and_harmless():
    """A client sending an ordinary event called "disconnect" or "connect" must not
    reach the real handlers (it would fake a departure or reset its connection)."""
    with running_server(grace=0) as srv:
        watcher = srv.client()
        client = srv.client()
        client.emit("userOnline", {"userId": 1})
        watcher.wait_change(1, "online")
        for event in ("disconnect", "connect", "*"):
            answer = client.call(event, {"userId": 1})
            assert answer["ok"] is False, event
        assert [e["event"] for e in client.received("presenceError")] == [
            "disconnect",
            "connect",
            "*",
        ]
        watcher.online_list()
        assert srv.snapshot() == {"1": ("online", 1)} and watcher.changes() == [(1, "online")]
        assert srv.server.health()["connections"] == 2
        client.emit("userHeartbeat", {"userId": 1})  # still itself
        assert client.call("userHeartbeat", {"userId": 1}) == {"ok": True}


def test_values_postgres_would_refuse_get_presence_error_and_writing_goes_on(engine):
    """A NUL or a lone surrogate in any field, an over-long value, a wrong type: each is
    refused at the edge with presenceError, changes nothing, and never reaches the
    database, so the next user's transitions are still written."""
    with running_server(engine) as srv:
        watcher = srv.client()
        client = srv.client()
        bad = []
        for text in ("a\x00b", "\ud800", "x\udfff"):
            bad += [
                ("userOnline", {"userId": text}),
                ("userOnline", {"userId": 1, "userName": text}),
                ("userOnline", {"userId": 1, "userType": text}),
                ("userOnline", {"userId": 1, "team": text}),
            ]
        bad += [
            ("userOnline", {"userId": 1, "userName": "n" * 257}),
            ("userOnline", {"userId": 1, "team": ["T"]}),
        ]
        for number, (event, payload) in enumerate(bad, 1):
            answer = client.call(event, payload)
            assert answer["ok"] is False, payload
            error = client.wait_error(number)
            assert error["event"] == event and error["message"] == answer["error"]
        client.emit("userOnline", {"userId": 1, "userName": "Ann"})
        client.emit("userStatus", {"userId": 1, "status": "away\x00"})
        assert "status" in client.wait_error(len(bad) + 1)["message"]
        client.emit("userStatus", {"userId": 1, "status": "away"})
        watcher.wait_change(1, "away")
        srv.flush()
        assert watcher.changes() == [(1, "online"), (1, "away")]
    state = storage.current_state(engine)
    assert list(state) == ["1"] and state["1"].user_name == "Ann" and state["1"].status == "away"
