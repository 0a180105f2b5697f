"""The ``subscribe`` snapshot, made fast: the present users' team index
(:class:`~presence_core.server.state.Roster`) it answers from instead of scanning
everyone, and each user's entry encoded once and kept.

An index or a cache is only worth having if it never disagrees with what it stands
for: these tests change teams and statuses every way the server does (a user
announcing a new team, a cluster node's mirror told by the stream) and check that
the snapshots, in order and byte for byte, are what a scan and plain JSON would give.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiohttp
import pytest

from presence_core.protocol import iso_utc
from presence_core.server.state import Roster, User
from tests.cluster_inprocess import running_cluster
from tests.server_harness import running_server
from tests.waiting import wait_for

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def scan(roster: Roster, teams: set[str], keys: set[str]) -> list[str]:
    """What the index must answer: everyone, filtered, in arrival order."""
    return [u.key for u in roster.values() if u.team in teams or u.key in keys]


def person(key: str, team: str | None) -> User:
    return User(key, key, "online", NOW, NOW, team=team)


def test_the_index_follows_arrivals_departures_and_team_changes():
    roster = Roster()
    for key, team in [("a", "red"), ("b", "blue"), ("c", None), ("d", "red"), ("e", "blue")]:
        roster[key] = person(key, team)
    assert [u.key for u in roster.team("red")] == ["a", "d"]
    roster["c"].team = "red"  # joins a team late: still in arrival order
    roster["a"].team = "blue"
    roster["a"].team = "red"  # and back
    assert [u.key for u in roster.team("red")] == ["a", "c", "d"]
    gone = roster.pop("d")
    gone.team = "blue"  # no longer present: no longer indexed anywhere
    del roster["b"]
    assert roster.pop("nobody", None) is None
    with pytest.raises(KeyError):
        roster.pop("nobody")
    roster["f"] = person("f", "red")
    roster["c"] = person("c", "blue")  # replaced: keeps its place, takes its team
    for teams, keys in [({"red"}, set()), ({"blue"}, set()), ({"red", "blue"}, {"a"}),
                        (set(), {"f", "a", "zz"}), ({"blue"}, {"f"})]:  # fmt: skip
        assert [u.key for u in roster.watched(teams, keys)] == scan(roster, teams, keys)
    assert [u.key for u in roster.team("blue")] == ["c", "e"]
    assert [u.key for u in roster.team("red")] == ["a", "f"]
    with pytest.raises(TypeError):
        roster.update({"x": person("x", "red")})  # would bypass the index


def test_a_team_snapshot_follows_a_user_who_changes_team():
    with running_server(diff_interval=0.05) as srv:
        tabs = {uid: srv.client() for uid in (1, 2, 3, 4)}
        for uid, team in [(1, "Ops"), (2, "Sales"), (3, "Ops"), (4, "Sales")]:
            assert tabs[uid].call("userOnline", {"userId": uid, "team": team}) == {"ok": True}
        # user 1 announces itself again with another team
        assert tabs[1].call("userOnline", {"userId": 1, "team": "Sales"}) == {"ok": True}
        watcher = srv.v2_client()
        ack = watcher.call("subscribe", {"teams": ["Sales"]})
        assert [(u["userId"], u["team"]) for u in ack["users"]] == [
            (1, "Sales"),
            (2, "Sales"),
            (4, "Sales"),
        ]
        other = srv.v2_client()
        ack = other.call("subscribe", {"teams": ["Ops", "Sales"], "userIds": [3, 9]})
        # every present user watched, once, in arrival order; then the unknown id
        assert [u["userId"] for u in ack["users"]] == [1, 2, 3, 4, 9]
        ack = srv.v2_client().call("subscribe", {"teams": ["Ops"]})
        assert [u["userId"] for u in ack["users"]] == [3]


def test_a_cluster_mirror_indexes_the_team_the_stream_tells(redis_server):
    with running_cluster(redis_server.url, 2) as cluster:
        a, b = cluster.nodes
        tab, other = a.client(), a.client()
        assert tab.call("userOnline", {"userId": "w1", "team": "red"})["ok"]
        assert other.call("userOnline", {"userId": "w2", "team": "red"})["ok"]
        cluster.wait_agree({"w1", "w2"})
        # w1 moves to blue; its next transition brings the team to b's mirror
        assert tab.call("userOnline", {"userId": "w1", "team": "blue"})["ok"]
        assert tab.call("userStatus", {"userId": "w1", "status": "away"})["ok"]
        mirror = b.server.state.users
        wait_for(
            lambda: mirror.get("w1") is not None and mirror["w1"].team == "blue",
            what="b's mirror told of w1's team",
        )
        watcher = b.v2_client()
        ack = watcher.call("subscribe", {"teams": ["red"]})
        assert [u["userId"] for u in ack["users"]] == ["w2"]
        ack = watcher.call("subscribe", {"teams": ["blue"]})  # now both: in arrival order
        assert [(u["userId"], u["status"]) for u in ack["users"]] == [
            ("w1", "away"),
            ("w2", "online"),
        ]


async def _raw_subscribe(url: str, payloads: list[dict]) -> list[str]:
    """The acknowledgements' text, as the WebSocket carries it, of ``subscribe`` calls."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    answers = []
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str('40{"protocol":2}')
        assert (await ws.receive_str()).startswith("40")
        for number, payload in enumerate(payloads, 1):
            await ws.send_str(f"42{number}" + json.dumps(["subscribe", payload]))
            while not (text := await ws.receive_str()).startswith(f"43{number}["):
                pass  # a diff, or engine.io's ping
            answers.append(text)
    return answers


def test_the_snapshot_text_is_plain_json_and_follows_every_change():
    with running_server(diff_interval=0.05, grace=30) as srv:
        tabs = {uid: srv.client() for uid in (1, "zoë", 3)}
        tabs[1].call("userOnline", {"userId": 1, "userName": 'Ann "the boss"', "team": "Ops"})
        tabs["zoë"].call("userOnline", {"userId": "zoë", "userName": "Zoë", "team": "Ops"})
        tabs[3].call("userOnline", {"userId": 3, "team": "Ops", "userType": "agent"})
        first = asyncio.run(_raw_subscribe(srv.url, [{"teams": ["Ops"]}]))[0]
        tabs[1].call("userStatus", {"userId": 1, "status": "busy"})
        tabs[3].call("userOnline", {"userId": 3, "team": "Ops", "userName": "Cy"})
        tabs["zoë"].drop()  # in its grace period: lastSeen is its last sign of life
        srv.loop.run(_settled(srv))
        second, third = asyncio.run(
            _raw_subscribe(srv.url, [{"teams": ["Ops"]}, {"userIds": [3, "nobody"]}])
        )
        for text in (first, second, third):
            ack = json.loads(text[3:])[0]
            assert text[3:] == json.dumps([ack], separators=(",", ":"))  # json.dumps's bytes
        before = {u["userId"]: u for u in json.loads(first[3:])[0]["users"]}
        after = {u["userId"]: u for u in json.loads(second[3:])[0]["users"]}
        assert list(after) == [1, "zoë", 3]
        assert (before[1]["status"], after[1]["status"]) == ("online", "busy")
        assert after[1]["statusSince"] > before[1]["statusSince"]
        assert (before[3]["userName"], after[3]["userName"]) == (None, "Cy")
        assert after[1]["lastSeen"] > before[1]["lastSeen"]  # live: now
        # zoë's connection is gone (in its grace period): lastSeen is her last sign of life
        assert after["zoë"]["lastSeen"] == iso_utc(srv.server.users["zoë"].last_seen)
        assert after["zoë"]["lastSeen"] <= before["zoë"]["lastSeen"]  # (then she was live)
        users = json.loads(third[3:])[0]["users"]
        assert [(u["userId"], u["status"]) for u in users] == [
            (1, "busy"),
            ("zoë", "online"),
            (3, "online"),
            ("nobody", "offline"),
        ]


async def _settled(srv) -> None:
    """Until the dropped connection is no longer live on the server."""
    from tests.waiting import async_wait_for

    await async_wait_for(lambda: len(srv.server.conns) == 2, what="the drop seen")
