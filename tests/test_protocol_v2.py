"""Protocol version 2 over real loopback Socket.IO: subscriptions, diffs, bulk status.

Real servers (ours; the guide's Node server where it matters) and real clients
(python-socketio here, Node's socket.io-client in tests/node/v2_client.js).
"Nothing else was delivered" is checked with a barrier, not a pause: a change the
client does watch, made after the one it must not see, arrives in the same or a
later diff, so once it is there every diff that could hold the other has arrived.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event, text

from presence_core import protocol
from presence_core.protocol import ProtocolError
from presence_core.server import auth
from tests.nodejs import NODE_DIR, node_available
from tests.server_harness import running_server
from tests.waiting import wait_for

SECRET = "test-secret-0123456789"


def online(client, user_id, team=None, name=None):
    payload = {"userId": user_id, "userType": "agent", "userName": name or f"U{user_id}"}
    if team is not None:
        payload["team"] = team
    assert client.call("userOnline", payload) == {"ok": True}


def all_changes(client):
    return [c for d in client.diffs() for c in d["changes"]]


# --- the payloads (no network) ----------------------------------------------------------


def test_protocol_version_is_2_only_when_asked_exactly():
    assert protocol.protocol_version({"protocol": 2}) == 2
    assert protocol.protocol_version({"protocol": 2.0, "token": "x"}) == 2
    for auth_payload in (
        None,
        {},
        {"protocol": "2"},
        {"protocol": 3},
        {"protocol": True},
        "2",
        [2],
    ):
        assert protocol.protocol_version(auth_payload) == 1


def test_subscription_shapes_combine_and_duplicates_collapse():
    sub = protocol.parse_subscription(
        {"teams": ["Ops", " Ops ", "Sales"], "userIds": [7, "7", "u"], "all": True}
    )
    assert sub == protocol.Subscription(
        all=True, teams=("Ops", "Sales"), users=((7, "7"), ("u", "u"))
    )
    assert protocol.parse_subscription({"userIds": [1]}).users == ((1, "1"),)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "all",
        {},
        {"all": False},
        {"all": "yes"},
        {"teams": "Ops"},
        {"teams": [""]},
        {"teams": [3]},
        {"teams": ["x" * 300]},
        {"teams": ["a\x00b"]},
        {"teams": [f"t{i}" for i in range(101)]},
        {"userIds": 5},
        {"userIds": [None]},
        {"userIds": [True]},
        {"userIds": list(range(1001))},
        {"teams": [], "userIds": []},
        {"team": ["Ops"]},
    ],
)
def test_bad_subscriptions_are_refused_with_a_reason(payload):
    with pytest.raises(ProtocolError) as err:
        protocol.parse_subscription(payload)
    assert str(err.value) and "\n" not in str(err.value)


def test_get_users_status_payload():
    assert protocol.parse_get_users_status({"userIds": [1, "b", 1]}) == ((1, "1"), ("b", "b"))
    assert protocol.parse_get_users_status({"userIds": []}) == ()
    for bad in (None, {}, {"userIds": "1"}, {"userIds": list(range(1001))}, {"ids": [1]}):
        with pytest.raises(ProtocolError):
            protocol.parse_get_users_status(bad)


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=40), st.integers(0, 10))
def test_diff_order_flags_exactly_the_jumps(seqs, base):
    order = protocol.DiffOrder(base)
    last = base
    for seq in seqs:
        verdict = order.check(seq)
        if seq == last + 1:  # brute force: in order exactly when one more than the last
            assert verdict == "next"
            last = seq
        else:
            assert verdict == ("old" if seq <= last else "gap")
        assert order.seq == last


def test_diff_and_ack_parse_back():
    change = protocol.diff_change(
        5, "away", protocol.now_millis(), "userStatus", team="Ops", user_type="a", user_name="N"
    )
    diff = protocol.parse_presence_diff({"seq": 3, "changes": [change]})
    assert diff.seq == 3 and diff.changes[0].user_id == "5" and diff.names[0].team == "Ops"
    with pytest.raises(ProtocolError):
        protocol.parse_presence_diff({"seq": -1, "changes": []})
    with pytest.raises(ProtocolError, match="refused: nope"):
        protocol.parse_subscribe_ack({"ok": False, "error": "nope"})


# --- negotiation and legacy clients ---------------------------------------------------------


def test_version_2_only_for_clients_that_ask_and_legacy_clients_see_the_guide():
    with running_server(diff_interval=0.05) as srv:
        legacy = srv.client()
        looser = srv.client(auth={"protocol": "2"})  # not exactly 2: the guide's protocol
        v2 = srv.v2_client()
        assert v2.call("subscribe", {"all": True})["ok"] is True
        alice = srv.client()
        online(alice, 1, team="Ops")
        assert alice.call("userStatus", {"userId": 1, "status": "away"}) == {"ok": True}
        assert alice.call("userOffline", {"userId": 1}) == {"ok": True}
        v2.wait_diff_change(1, "offline")
        for guide_client in (legacy, looser):
            guide_client.wait_change(1, "offline")
            guide_client.online_list()  # barrier: everything before it has arrived
            assert guide_client.changes() == [(1, "online"), (1, "away"), (1, "offline")]
            assert {name for name, _payload in guide_client.events} == {
                "userStatusChanged",
                "onlineUsersList",
            }
            for payload in guide_client.received("userStatusChanged"):
                assert set(payload) == {"userId", "status", "lastSeen", "reason"}
        # a version-2 client gets diffs, never the guide's broadcast
        assert v2.received("userStatusChanged") == []
        assert v2.diff_changes() == [(1, "online"), (1, "away"), (1, "offline")]
        # the guide's clients cannot subscribe: it is not their protocol
        reply = legacy.call("subscribe", {"all": True})
        assert reply["ok"] is False and "protocol: 2" in reply["error"]
        assert legacy.wait_error()["event"] == "subscribe"


# --- subscribe, unsubscribe, snapshots and diffs ----------------------------------------------


def test_subscribe_by_team_snapshot_then_diffs_of_that_team_only():
    with running_server(diff_interval=0.05) as srv:
        people = {uid: srv.client() for uid in (1, 2, 3)}
        online(people[1], 1, team="Ops", name="Ann")
        online(people[2], 2, team="Sales")
        online(people[3], 3, team="Ops")
        watcher = srv.v2_client()
        ack = watcher.call("subscribe", {"teams": ["Ops"]})
        assert ack["ok"] is True and ack["seq"] == 0
        by_id = {u["userId"]: u for u in ack["users"]}
        assert set(by_id) == {1, 3}
        assert set(by_id[1]) == {
            "userId",
            "status",
            "lastSeen",
            "statusSince",
            "team",
            "userType",
            "userName",
        }
        assert (by_id[1]["status"], by_id[1]["team"], by_id[1]["userName"]) == (
            "online",
            "Ops",
            "Ann",
        )

        assert people[2].call("userStatus", {"userId": 2, "status": "away"}) == {"ok": True}
        assert people[1].call("userStatus", {"userId": 1, "status": "busy"}) == {"ok": True}
        change = watcher.wait_diff_change(1, "busy")
        assert set(change) == {
            "userId",
            "status",
            "lastSeen",
            "statusSince",
            "reason",
            "team",
            "userType",
            "userName",
        }
        assert (change["team"], change["reason"], change["userName"]) == (
            "Ops",
            "userStatus",
            "Ann",
        )
        assert watcher.diff_changes() == [(1, "busy")]  # Sales' change came first: not ours

        # another shape adds to what is watched; its acknowledgement covers everything
        ack = watcher.call("subscribe", {"userIds": [2, "nobody"]})
        assert ack["seq"] == watcher.diffs()[-1]["seq"]
        states = {u["userId"]: u["status"] for u in ack["users"]}
        assert states == {1: "busy", 3: "online", 2: "away", "nobody": "offline"}

        # unsubscribe the team: Ops is silent now, user 2 is still watched
        assert watcher.call("unsubscribe", {"teams": ["Ops"]})["ok"] is True
        assert people[3].call("userOffline", {"userId": 3}) == {"ok": True}
        assert people[2].call("userOffline", {"userId": 2}) == {"ok": True}
        watcher.wait_diff_change(2, "offline")
        assert watcher.diff_changes() == [(1, "busy"), (2, "offline")]


def next_millisecond() -> None:
    """Wait until the clock has left the current millisecond (the wire's resolution)."""
    now = time.time()
    wait_for(lambda: int(time.time() * 1000) > int(now * 1000), 1, interval=0.0005)


def test_diffs_carry_every_transition_in_order_with_consecutive_seq():
    interval = 0.3
    with running_server(diff_interval=interval, status_burst=100, status_rate=100) as srv:
        watcher = srv.v2_client()
        base = watcher.call("subscribe", {"all": True})["seq"]
        alice = srv.client()
        expected = []
        started = time.monotonic()
        for _round in range(4):
            online(alice, "a")
            expected.append(("a", "online"))
            for status in ("away", "busy", "online"):
                next_millisecond()  # the server dates each change apart, never far ahead
                assert alice.call("userStatus", {"userId": "a", "status": status}) == {"ok": True}
                expected.append(("a", status))
            next_millisecond()
            assert alice.call("userOffline", {"userId": "a"}) == {"ok": True}
            expected.append(("a", "offline"))
            next_millisecond()
        took = time.monotonic() - started
        wait_for(lambda: len(all_changes(watcher)) >= len(expected), what="every change")
        assert watcher.diff_changes() == expected
        seqs = [d["seq"] for d in watcher.diffs()]
        assert seqs == list(range(base + 1, base + 1 + len(seqs)))
        # one diff a tick at most: 20 changes, far fewer frames
        assert len(seqs) <= took / interval + 2
        times = [protocol.parse_last_seen(c["lastSeen"]) for c in all_changes(watcher)]
        assert times == sorted(times) and len(set(times)) == len(times)


def test_no_diff_when_nothing_watched_changed():
    with running_server(diff_interval=0.05) as srv:
        quiet = srv.v2_client()
        barrier = srv.v2_client()
        assert quiet.call("subscribe", {"teams": ["Quiet"]})["ok"]
        assert barrier.call("subscribe", {"all": True})["ok"]
        bob = srv.client()
        online(bob, "b", team="Loud")
        barrier.wait_diff_change("b", "online")
        assert quiet.call("subscribe", {"userIds": ["b"]})["ok"]  # watches b from now on
        assert bob.call("userOffline", {"userId": "b"}) == {"ok": True}
        quiet.wait_diff_change("b", "offline")
        assert quiet.diff_changes() == [("b", "offline")]  # nothing for the Loud team before
        assert [d["seq"] for d in quiet.diffs()] == [1]


def test_a_client_that_misses_a_diff_sees_the_jump_and_resubscribes():
    with running_server(diff_interval=0.05) as srv:
        watcher = srv.v2_client()
        order = protocol.DiffOrder()
        order.reset(watcher.call("subscribe", {"all": True})["seq"])
        carol = srv.client()
        online(carol, "c")
        first = wait_for(lambda: watcher.diffs(), what="first diff")[0]
        assert order.check(first["seq"]) == "next"
        assert carol.call("userStatus", {"userId": "c", "status": "away"}) == {"ok": True}
        wait_for(lambda: len(watcher.diffs()) >= 2, what="second diff")  # "lost" below
        assert carol.call("userStatus", {"userId": "c", "status": "busy"}) == {"ok": True}
        third = wait_for(lambda: watcher.diffs()[2:], what="third diff")[0]
        assert order.check(third["seq"]) == "gap"  # the second never reached the client
        ack = watcher.call("subscribe", {"all": True})  # re-subscribe: state and a new base
        order.reset(ack["seq"])
        assert [(u["userId"], u["status"]) for u in ack["users"]] == [("c", "busy")]
        assert carol.call("userOffline", {"userId": "c"}) == {"ok": True}
        wait_for(lambda: watcher.diffs()[3:], what="fourth diff")
        assert order.check(watcher.diffs()[3]["seq"]) == "next"


# --- getUsersStatus ----------------------------------------------------------------------------


def test_get_users_status_online_offline_unknown_hidden_in_one_query(engine):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO presence_users (user_id, team, user_name, last_seen, hide_last_seen)"
                " VALUES ('olga', 'Ops', 'Olga', '2026-03-01T10:00:00Z', false),"
                " ('hugo', 'Ops', 'Hugo', '2026-03-01T11:00:00Z', true)"
            )
        )
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") and "presence_users" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with running_server(engine) as srv:
            pia = srv.client()
            online(pia, 9, team="Ops", name="Pia")
            legacy = srv.client()  # any protocol version may ask
            before = len(statements)
            answer = legacy.call("getUsersStatus", {"userIds": [9, "olga", "hugo", "ghost", 42]})
            assert len(statements) - before == 1  # one query for the four not connected
            users = {u["userId"]: u for u in answer["users"]}
            assert list(users) == [9, "olga", "hugo", "ghost", 42]  # the order asked, wire types
            assert (users[9]["status"], users[9]["team"]) == ("online", "Ops")
            assert users[9]["lastSeen"] is not None
            assert users["olga"]["status"] == "offline"
            assert users["olga"]["lastSeen"] == "2026-03-01T10:00:00.000Z"
            assert users["olga"]["userName"] == "Olga"
            assert users["hugo"]["status"] == "offline"
            assert users["hugo"]["lastSeen"] is None  # hidden: no individual time
            for unknown in ("ghost", 42):
                assert users[unknown]["status"] == "offline" and users[unknown]["lastSeen"] is None
            # a user who just left is answered from memory, even before the write lands
            assert pia.call("userOffline", {"userId": 9}) == {"ok": True}
            [gone] = legacy.call("getUsersStatus", {"userIds": [9]})["users"]
            assert gone["status"] == "offline" and gone["lastSeen"] is not None
            # only present users: no query at all
            online(pia, 9, team="Ops")
            before = len(statements)
            assert legacy.call("getUsersStatus", {"userIds": [9]})["users"][0]["status"] == "online"
            assert len(statements) == before
            # too many ids: refused, nothing asked of the database
            reply = legacy.call("getUsersStatus", {"userIds": list(range(1001))})
            assert reply["ok"] is False and "1000" in reply["error"]
            assert len(statements) == before
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_get_users_status_without_a_database():
    with running_server() as srv:
        asker = srv.client()
        [entry] = asker.call("getUsersStatus", {"userIds": ["who"]})["users"]
        assert entry == {
            "userId": "who",
            "status": "offline",
            "lastSeen": None,
            "statusSince": None,
            "team": None,
            "userType": None,
            "userName": None,
        }


# --- rights and bad payloads ---------------------------------------------------------------------


def test_rights_observer_watches_all_user_only_own_team_when_so_configured():
    with running_server(auth_secret=SECRET, watch_policy="team", diff_interval=0.05) as srv:
        observer = srv.v2_client(auth.issue_token(SECRET, observer=True))
        assert observer.call("subscribe", {"all": True})["ok"] is True
        olaf = srv.client(auth={"token": auth.issue_token(SECRET, "olaf")})
        assert olaf.call("userOnline", {"team": "Sales"}) == {"ok": True}

        ann = srv.v2_client(auth.issue_token(SECRET, "ann"))
        refused = ann.call("subscribe", {"teams": ["Ops"]})  # not announced yet: no team
        assert refused["ok"] is False and "own team" in refused["error"]
        assert ann.call("userOnline", {"team": "Ops"}) == {"ok": True}
        for payload in ({"all": True}, {"teams": ["Sales"]}, {"userIds": ["olaf"]}):
            reply = ann.call("subscribe", payload)
            assert reply["ok"] is False, payload
        assert ann.call("getUsersStatus", {"userIds": ["olaf"]})["ok"] is False
        assert len(ann.received("presenceError")) == 5
        ack = ann.call("subscribe", {"teams": ["Ops"]})
        assert ack["ok"] is True and [u["userId"] for u in ack["users"]] == ["ann"]
        assert ann.call("getUsersStatus", {"userIds": ["ann"]})["users"][0]["status"] == "online"
        # the refused subscriptions changed nothing: Sales' news never reaches ann
        assert olaf.call("userStatus", {"status": "away"}) == {"ok": True}
        assert ann.call("userStatus", {"status": "busy"}) == {"ok": True}
        ann.wait_diff_change("ann", "busy")
        observer.wait_diff_change("olaf", "away")
        assert ann.diff_changes() == [("ann", "busy")]
    with running_server(auth_secret=SECRET, diff_interval=0.05) as srv:  # default: everything
        ann = srv.v2_client(auth.issue_token(SECRET, "ann"))
        assert ann.call("subscribe", {"all": True})["ok"] is True


def test_bad_payloads_get_presence_error_and_change_nothing():
    with running_server(diff_interval=0.05) as srv:
        watcher = srv.v2_client()
        assert watcher.call("subscribe", {"teams": ["Ops"]})["ok"]
        bad = [
            ("subscribe", None),
            ("subscribe", {"all": "yes", "teams": ["Sales"]}),
            ("subscribe", {"teams": ["Sales"], "userIds": [None]}),
            ("subscribe", {"teams": ["Sales"], "extra": 1}),
            ("unsubscribe", {"teams": "Ops"}),
            ("unsubscribe", {}),
            ("getUsersStatus", {"userIds": [[1]]}),
            ("getUsersStatus", ["x"]),
        ]
        for index, (name, payload) in enumerate(bad, start=1):
            reply = watcher.call(name, payload)
            assert reply["ok"] is False, (name, payload)
            error = watcher.wait_error(index)
            assert error["event"] == name and error["message"] == reply["error"]
        # still watching Ops only, exactly as before
        sam, oli = srv.client(), srv.client()
        online(sam, "sam", team="Sales")
        online(oli, "oli", team="Ops")
        watcher.wait_diff_change("oli", "online")
        assert watcher.diff_changes() == [("oli", "online")]


# --- Node's socket.io-client ---------------------------------------------------------------------


@pytest.mark.skipif(not node_available(), reason="run `npm ci` in tests/node")
def test_node_socket_io_client_speaks_version_2():
    with running_server(diff_interval=0.05) as srv:
        done = subprocess.run(
            ["node", str(NODE_DIR / "v2_client.js"), srv.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=NODE_DIR,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        )
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ack"]["ok"] is True and seen["ack"]["users"] == []
    assert seen["guideEventsAtV2"] == 0  # no userStatusChanged for a version-2 client
    changes = [(c["userId"], c["status"]) for d in seen["diffs"] for c in d["changes"]]
    assert changes == [(7, "online"), (7, "away"), (7, "offline")]  # Sales' 8 is not watched
    seqs = [d["seq"] for d in seen["diffs"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(c["team"] == "Ops" for d in seen["diffs"] for c in d["changes"])
    status = {u["userId"]: u for u in seen["status"]["users"]}
    assert status[7]["status"] == "offline" and status[7]["lastSeen"] is not None
    assert status[8]["status"] == "online" and status[8]["team"] == "Sales"
    assert status["nobody"] == {
        "userId": "nobody",
        "status": "offline",
        "lastSeen": None,
        "statusSince": None,
        "team": None,
        "userType": None,
        "userName": None,
    }
    assert seen["error"]["event"] == "subscribe"
