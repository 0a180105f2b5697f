"""Wire compatibility with the reference JavaScript implementation.

Node's socket.io-client v4 plays the guide's flows against our server, and our
simulator drives the guide's own Node socket.io v4 server (tests/node).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

import pytest

from presence_core import protocol
from presence_core.synthetic import crowd as simulator
from tests.nodejs import NODE_DIR, guide_server, node_available
from tests.server_harness import Client, LoopThread, running_server
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not node_available(), reason="run `npm ci` in tests/node")

TUESDAY = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)


def run_node_client(url: str) -> dict:
    done = subprocess.run(
        ["node", str(NODE_DIR / "guide_client.js"), url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=NODE_DIR,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
    )
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_socket_io_client_plays_the_guide_against_our_server():
    with running_server(grace=0.3) as srv:
        seen = run_node_client(srv.url)

    online = seen["online"]
    assert set(online) == {"userId", "status", "lastSeen", "reason"}
    assert online["userId"] == 123 and seen["onlineUserIdType"] == "number"
    assert seen["lastSeenRoundTrips"] is True  # exactly what JS Date.toJSON() writes

    assert seen["list"] == [
        {
            "userId": 123,
            "status": "online",
            "lastSeen": seen["list"][0]["lastSeen"],  # now: the user is connected
            "userType": "agent",
            "userName": "John Doe",
            "statusSince": online["lastSeen"],
        }
    ]
    assert seen["list"][0]["lastSeen"] >= online["lastSeen"]  # ISO strings sort as times
    assert seen["changesAfterRepeat"] == 1  # second tab and repeated userOnline: silent
    assert seen["heartbeatAck"] == {"ok": True}
    assert seen["away"]["status"] == "away"
    assert [e["event"] for e in seen["errors"]] == ["userOnline", "userOffline"]
    assert [u["status"] for u in seen["listAfterFirstOffline"]] == ["away"]
    assert seen["offline"]["userId"] == 123
    assert seen["listWithTeam"][0]["team"] == "Ops"
    assert seen["bobOffline"]["userId"] == "bob"
    assert seen["finalList"] == []
    assert [(c["userId"], c["status"]) for c in seen["watcherChanges"]] == [
        (123, "online"),
        (123, "away"),
        (123, "offline"),
        ("bob", "online"),
        ("bob", "offline"),
    ]


def test_our_simulator_drives_the_guides_node_server():
    loop = LoopThread()
    try:
        with guide_server() as srv:
            watcher = Client(loop, srv.url)
            watcher.connect()
            stats = loop.run(
                simulator.run_crowd(
                    srv.url,
                    users=25,
                    speed=3600,
                    duration=3,
                    seed=5,
                    start=TUESDAY,
                    heartbeat=0.5,
                    ramp=0.5,
                ),
                timeout=60,
            )
            assert stats.connects >= 10 and stats.errors_received == 0
            assert stats.present == {}
            wait_for(lambda: watcher.online_list() == [], what="the guide server empty again")
            changes = watcher.received("userStatusChanged")
            assert len(changes) >= 20
            # what the Node server sends is what our listener-side parser reads
            parsed = [protocol.parse_status_changed(c) for c in changes]
            assert all(p.last_seen is not None for p in parsed)
            assert {p.status for p in parsed} == {"online", "offline"}  # the guide knows no more
            assert all(isinstance(c["userId"], int) for c in changes)
            watcher.close()
    finally:
        loop.close()
