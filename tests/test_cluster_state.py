"""Nodes of one cluster in one process: real PresenceServers sharing a real Redis,
real Socket.IO clients (legacy and protocol version 2) on each.

What one node's clients do must be seen the same, once, on every node: two tabs on
two nodes, a reload onto another node inside the grace period, a node that stops
giving signs of life, Redis paused and Redis restarted empty, and the history
written once by the nodes' writers (the ``writers`` consumer group).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core.server.cluster_link import ClusterLink
from presence_core.server.cluster_state import ClusterState, from_ms
from tests.cluster_inprocess import running_cluster
from tests.conftest import free_port
from tests.redis_harness import RedisServer
from tests.waiting import wait_for


def _events(redis_url: str) -> list[dict]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        return [fields for _id, fields in r.xrange("presence:events")]


def test_two_tabs_on_two_nodes(redis_server):
    with running_cluster(redis_server.url, 2) as cluster:
        a, b = cluster.nodes
        tab_a, tab_b = a.client(), b.client()
        watch_a, watch_b = a.client(), b.client()
        v2_a, v2_b = a.v2_client(), b.v2_client()
        for v2 in (v2_a, v2_b):
            assert v2.call("subscribe", {"all": True})["ok"]
        tab_a.emit("userOnline", {"userId": 1, "userName": "Ann", "team": "red"})
        tab_b.emit("userOnline", {"userId": 1})
        cluster.wait_agree({"1"})
        tab_a.disconnect()  # one tab closes: still online everywhere
        wait_for(lambda: a.snapshot().get("1") == ("online", 0), what="tab a parted")
        tab_b.emit("userStatus", {"userId": 1, "status": "away"})
        for watcher in (watch_a, watch_b):
            watcher.wait_change(1, "away")
        tab_b.disconnect()  # the last tab closes: offline, once, on every node
        for watcher in (watch_a, watch_b):
            watcher.wait_change(1, "offline")
        for v2 in (v2_a, v2_b):
            v2.wait_diff_change(1, "offline")
        cluster.wait_agree(set())
        expected = [(1, "online"), (1, "away"), (1, "offline")]
        for watcher in (watch_a, watch_b):
            assert watcher.changes(1) == expected
        for v2 in (v2_a, v2_b):
            assert v2.diff_changes(1) == expected
            seqs = [d["seq"] for d in v2.diffs()]
            assert seqs == list(range(1, len(seqs) + 1))
        assert [(e["status"], e["reason"]) for e in _events(redis_server.url)] == [
            ("online", "userOnline"),
            ("away", "userStatus"),
            ("offline", "disconnect"),
        ]
        # every node answers the same: names travelled with the transition
        online = watch_a.online_list()
        assert online == []


def test_online_list_and_status_are_the_same_on_every_node(redis_server):
    with running_cluster(redis_server.url, 3) as cluster:
        a, b, c = cluster.nodes
        a.client().emit("userOnline", {"userId": "ann", "userName": "Ann", "team": "red"})
        b.client().emit("userOnline", {"userId": 2, "userName": "Bob"})
        cluster.wait_agree({"ann", "2"})
        lists = []
        for node in cluster.nodes:
            got = node.client().online_list()
            lists.append(sorted([(u["userId"], u["status"], u["userName"]) for u in got], key=str))
        assert (
            lists[0]
            == lists[1]
            == lists[2]
            == sorted([("ann", "online", "Ann"), (2, "online", "Bob")], key=str)
        )
        v2 = c.v2_client()
        answer = v2.call("getUsersStatus", {"userIds": ["ann", 2, "nobody"]})
        assert [(u["userId"], u["status"]) for u in answer["users"]] == [
            ("ann", "online"),
            (2, "online"),
            ("nobody", "offline"),
        ]


def test_reload_onto_another_node_within_grace_changes_nothing(redis_server):
    with running_cluster(redis_server.url, 2, grace=2.0) as cluster:
        a, b = cluster.nodes
        watcher = a.client()
        tab = a.client()
        tab.emit("userOnline", {"userId": 5})
        watcher.wait_change(5, "online")
        tab.drop()  # the page reloads: the connection is lost without a goodbye...
        again = b.client()  # ...and the new page lands on the other node
        again.emit("userOnline", {"userId": 5})
        wait_for(lambda: b.snapshot().get("5") == ("online", 1), what="rejoined on b")
        # a's grace period ends: its connection stops counting, the user stays
        wait_for(lambda: a.snapshot().get("5") == ("online", 0), timeout=10, what="grace over")
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            wait_for(lambda: r.hget("presence:user:5", "n") == "1", what="one connection left")
        assert watcher.changes(5) == [(5, "online")]
        assert len(_events(redis_server.url)) == 1


def test_a_node_that_stops_living_is_reaped_and_comes_back_consistent(redis_server):
    with running_cluster(redis_server.url, 2, node_timeout=2.0) as cluster:
        a, b = cluster.nodes
        watcher = b.client()
        only = a.client()
        only.emit("userOnline", {"userId": "only-a"})
        only.emit("userStatus", {"userId": "only-a", "status": "away"})
        a.client().emit("userOnline", {"userId": "both"})
        b.client().emit("userOnline", {"userId": "both"})
        cluster.wait_agree({"only-a", "both"})
        watcher.wait_change("only-a", "away")
        liveness = a.server.cluster.liveness
        task = a.server.cluster._tasks[0]
        a.loop.run(_cancel(task))  # a freezes: no more signs of life
        change = watcher.wait_change("only-a", "offline", timeout=15)
        assert change["reason"] == "node_down"
        assert watcher.changes("both") == [("both", "online")]
        wait_for(lambda: set(b.snapshot()) == {"both"}, what="b's mirror")
        # a wakes: it finds itself reaped, registers again, re-joins what it holds
        a.server.cluster._tasks[0] = a.loop.run(_start(liveness.run()))
        # back online, with the status it had (two real, new transitions)
        wait_for(lambda: len(watcher.changes("only-a")) == 5, timeout=15, what="only-a back")
        assert watcher.changes("only-a") == [
            ("only-a", "online"),
            ("only-a", "away"),
            ("only-a", "offline"),
            ("only-a", "online"),
            ("only-a", "away"),
        ]
        cluster.wait_agree({"only-a", "both"})
        statuses = [(e["user"], e["status"], e["reason"]) for e in _events(redis_server.url)]
        assert statuses.count(("only-a", "offline", "node_down")) == 1
        assert ("both", "offline", "node_down") not in statuses
        assert cluster.health(a)["cluster"]["recoveries"]["reaped"] == 1


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _start(coro) -> asyncio.Task:
    return asyncio.ensure_future(coro)


def test_redis_paused_loses_no_transition(redis_server):
    with running_cluster(redis_server.url, 2, grace=0.1) as cluster:
        a, b = cluster.nodes
        watch_a, watch_b = a.client(), b.client()
        leaving = a.client()
        leaving.emit("userOnline", {"userId": "leaves"})
        staying = b.client()
        staying.emit("userOnline", {"userId": "stays"})
        cluster.wait_agree({"leaves", "stays"})
        redis_server.pause()
        try:
            leaving.disconnect()  # while Redis does not answer
            staying.emit("userStatus", {"userId": "stays", "status": "busy"})
            staying.emit("userStatus", {"userId": "stays", "status": "online"})  # and back
            wait_for(
                lambda: (
                    cluster.health(a)["cluster"]["outbox"] >= 1
                    and cluster.health(b)["cluster"]["outbox"] >= 1
                ),
                timeout=10,
                what="both nodes keep what they cannot send",
            )
            health = cluster.health(a)["cluster"]
            assert health["redis"] is False and health["redis_unreachable_since"]
            assert len(a.server.conns) == 1 and watch_a.sio.connected  # clients stay
        finally:
            redis_server.resume()
        for watcher in (watch_a, watch_b):
            watcher.wait_change("leaves", "offline", timeout=15)
            wait_for(lambda w=watcher: len(w.changes("stays")) == 3, what="stays back online")
        cluster.wait_agree({"stays"})
        wait_for(lambda: cluster.health(a)["cluster"]["redis"] is True, what="redis back")
        for watcher in (watch_a, watch_b):
            assert watcher.changes("leaves") == [("leaves", "online"), ("leaves", "offline")]
            assert watcher.changes("stays") == [
                ("stays", "online"),
                ("stays", "busy"),
                ("stays", "online"),
            ]
        assert cluster.health(a)["cluster"]["outbox"] == 0


def test_redis_restarted_empty_is_rebuilt_from_the_nodes(redis_server):
    with running_cluster(redis_server.url, 2, node_timeout=2.0) as cluster:
        a, b = cluster.nodes
        watcher = b.client()
        a.client().emit("userOnline", {"userId": "kept"})
        status = b.client()
        status.emit("userOnline", {"userId": "away-user"})
        status.emit("userStatus", {"userId": "away-user", "status": "away"})
        cluster.wait_agree({"kept", "away-user"})
        watcher.wait_change("away-user", "away")
        before = len(watcher.received("userStatusChanged"))
        redis_server.restart_empty()
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            wait_for(
                lambda: r.smembers("presence:present") == {"kept", "away-user"},
                timeout=15,
                what="the new Redis restored from the nodes",
            )
            assert r.hget("presence:user:away-user", "status") == "away"
            assert r.xlen("presence:events") == 0 if r.exists("presence:events") else True
        cluster.wait_agree({"kept", "away-user"})
        # no transition was made up: the users did not change
        assert len(watcher.received("userStatusChanged")) == before
        # and the cluster works on: a change made after is delivered once
        status.disconnect()
        watcher.wait_change("away-user", "offline", timeout=15)
        assert watcher.changes("away-user") == [
            ("away-user", "online"),
            ("away-user", "away"),
            ("away-user", "offline"),
        ]


@pytest.mark.usefixtures("redis_server")
def test_the_writers_record_each_transition_once(redis_server, engine):
    with running_cluster(redis_server.url, 2, engine=engine) as cluster:
        a, b = cluster.nodes
        tab_a, tab_b = a.client(), b.client()
        tab_a.emit("userOnline", {"userId": "w1", "team": "red"})
        tab_b.emit("userOnline", {"userId": "w1"})
        b.client().emit("userOnline", {"userId": "w2"})
        tab_b.emit("userStatus", {"userId": "w1", "status": "away"})
        tab_a.disconnect()
        tab_b.disconnect()
        cluster.wait_agree({"w2"})

        def rows() -> list[tuple]:
            with engine.connect() as conn:
                return conn.execute(
                    text(
                        "select user_id, status, reason, source from presence_transitions "
                        "order by occurred_at, user_id"
                    )
                ).all()

        wait_for(lambda: len(rows()) >= 4, timeout=15, what="four rows")
        wait_for(
            lambda: all(cluster.health(n)["cluster"]["unacked_writes"] == 0 for n in cluster.nodes),
            timeout=15,
            what="every entry acknowledged",
        )
        got = sorted(rows())
        assert got == sorted(
            [
                ("w1", "online", "userOnline", "server"),
                ("w2", "online", "userOnline", "server"),
                ("w1", "away", "userStatus", "server"),
                ("w1", "offline", "disconnect", "server"),
            ]
        )
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            pending = r.xpending("presence:events", "writers")
            assert pending["pending"] == 0
            groups = r.xinfo_groups("presence:events")
            assert groups[0]["name"] == "writers"


def test_redis_lost_while_a_node_was_gone_settles_and_replays(redis_server):
    """Redis comes back empty after a node stopped: the live node restores its users,
    replays what happened meanwhile with its real time, and the stopped node's user,
    whom nobody restored, goes offline once, inferred, reason reconcile."""
    with running_cluster(redis_server.url, 2, node_timeout=2.0, grace=0.1) as cluster:
        a, b = cluster.nodes
        watcher = b.client()
        a.client().emit("userOnline", {"userId": "lost"})
        leaving = b.client()
        leaving.emit("userOnline", {"userId": "leaves"})
        b.client().emit("userOnline", {"userId": "stays"})
        cluster.wait_agree({"lost", "leaves", "stays"})
        cluster.stop_node(a)  # a goes away (its users are still registered to it)
        redis_server.kill()
        leaving.disconnect()
        wait_for(lambda: cluster.health(b)["cluster"]["outbox"] == 1, what="kept in the outbox")
        restarted = datetime.now(UTC)
        redis_server.start()  # empty
        gone = watcher.wait_change("leaves", "offline", timeout=15)
        assert gone["reason"] == "disconnect"
        lost = watcher.wait_change("lost", "offline", timeout=15)
        assert lost["reason"] == "reconcile"
        # dated when it happened, not when Redis came back
        assert datetime.fromisoformat(gone["lastSeen"]) < restarted
        wait_for(lambda: set(b.snapshot()) == {"stays"}, what="b's mirror")
        events = _events(redis_server.url)
        assert sorted((e["user"], e["status"], e["reason"], e["inferred"]) for e in events) == [
            ("leaves", "offline", "disconnect", "0"),
            ("lost", "offline", "reconcile", "1"),
        ]
        assert watcher.changes("stays") == [("stays", "online")]
        assert cluster.health(b)["cluster"]["recoveries"]["epoch"] == 1


def test_entries_a_dead_writer_took_are_claimed_and_written(redis_server, engine):
    """A writer that took entries and died without acknowledging them: a live node
    claims them after twice the node timeout and writes them (once: the unique key)."""
    with running_cluster(redis_server.url, 1, node_timeout=1.0) as cluster:
        (a,) = cluster.nodes  # no database: it records nothing
        a.client().emit("userOnline", {"userId": "c1"})
        a.client().emit("userOnline", {"userId": "c2"})
        cluster.wait_agree({"c1", "c2"})
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            r.xgroup_create("presence:events", "writers", id="0")
            taken = r.xreadgroup("writers", "dead-node", {"presence:events": ">"})
            assert len(taken[0][1]) == 2  # taken, never acknowledged
        b = cluster.add_node("n2", node_timeout=1.0, flush_interval=0.05)
        assert b.server.cluster.recorder is None  # (the cluster helper has no engine)
    with running_cluster(redis_server.url, 0, engine=engine, node_timeout=1.0) as cluster:
        cluster.add_node("n3")

        def rows() -> list[tuple]:
            with engine.connect() as conn:
                return conn.execute(
                    text("select user_id, status from presence_transitions order by user_id")
                ).all()

        # the dead writer's entries (claimed), and n1's users going offline when n3
        # reaps n1 (it stopped and never came back)
        wait_for(lambda: len(rows()) == 4, timeout=20, what="every entry written")
        assert sorted(rows()) == [
            ("c1", "offline"),
            ("c1", "online"),
            ("c2", "offline"),
            ("c2", "online"),
        ]
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            wait_for(
                lambda: r.xpending("presence:events", "writers")["pending"] == 0,
                timeout=20,
                what="acknowledged",
            )


def test_a_node_that_lost_the_streams_thread_resnapshots(redis_server):
    """A node whose reader was away while the stream was trimmed past its position
    re-snapshots: its legacy clients hear the differences, its version-2 watchers
    see their seq skip one."""
    with running_cluster(redis_server.url, 2) as cluster:
        a, b = cluster.nodes
        watcher, v2 = b.client(), b.v2_client()
        assert v2.call("subscribe", {"all": True})["ok"]
        a.client().emit("userOnline", {"userId": "before"})
        watcher.wait_change("before", "online")
        v2.wait_diff_change("before", "online")
        reader = b.server.cluster.stream
        b.loop.run(_cancel(b.server.cluster._tasks[1]))  # b's reader is away...
        for n in range(20):  # ...while the cluster goes on
            tab = a.client()
            tab.emit("userOnline", {"userId": f"u{n}"})
            if n % 2:
                tab.disconnect()
        a.client().emit("userOnline", {"userId": "after"})
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            wait_for(lambda: r.scard("presence:present") == 12, what="all changes made")
            r.xtrim("presence:events", maxlen=3, approximate=False)  # past b's position
        b.server.cluster._tasks[1] = b.loop.run(_start(reader.run()))
        watcher.wait_change("after", "online", timeout=15)
        expected = {"before", "after"} | {f"u{n}" for n in range(0, 20, 2)}
        wait_for(lambda: set(b.snapshot()) == expected, what="b's mirror rebuilt")
        assert reader.resnapshots == 1

        def told() -> set[str]:
            return {user for user, status in watcher.changes() if status == "online"}

        # the users it missed, told (the odd ones came and went unseen: no change)
        wait_for(lambda: told() == expected, what=f"differences told: {told()}")
        assert len(watcher.changes()) == len(expected)  # each once
        v2.wait_diff_change("after", "online")
        seqs = [d["seq"] for d in v2.diffs()]
        assert seqs[-1] == seqs[-2] + 2  # skipped one: the client subscribes again


def test_restore_records_the_restored_status_where_the_history_lacks_it(redis_server, engine):
    """A transition a writer took and never wrote vanishes with Redis; the node that
    restores the user writes the status the cluster agreed on, at the moment it began
    (where the row exists, the unique key makes it a no-op)."""

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            return conn.execute(
                text("select status, occurred_at, reason from presence_transitions order by 2")
            ).all()

    with running_cluster(redis_server.url, 1, engine=engine, node_timeout=1.0) as cluster:
        (a,) = cluster.nodes
        tab = a.client()
        tab.emit("userOnline", {"userId": "r1"})
        tab.emit("userStatus", {"userId": "r1", "status": "away"})
        wait_for(lambda: len(rows()) == 2, what="both rows")
        online, away = rows()
        with engine.begin() as conn:  # as if the writer had taken it and died
            conn.execute(text("delete from presence_transitions where status = 'away'"))
        redis_server.restart_empty()
        wait_for(lambda: len(rows()) == 2, timeout=15, what="the restored status written")
        assert rows() == [online, ("away", away[1], "reconcile")]
        assert cluster.health(a)["cluster"]["recoveries"]["epoch"] == 1


def test_a_redis_with_a_password(tmp_path):
    """The Redis URL may carry a password; /health never shows the URL."""
    server = RedisServer(tmp_path / "redis-pw", password="s3cret-pw").start()
    try:
        with running_cluster(server.url, 2) as cluster:
            a, b = cluster.nodes
            watcher = b.client()
            a.client().emit("userOnline", {"userId": "pw"})
            watcher.wait_change("pw", "online")
            health = cluster.health(a)
            assert health["cluster"]["redis"] is True
            assert "s3cret-pw" not in str(health)
        wrong = server.url.replace("s3cret-pw", "wrong")
        with running_cluster(wrong, 1, redis_timeout=0.3) as cluster:
            health = cluster.health(cluster.nodes[0])["cluster"]
            assert health["redis"] is False and health["ready"] is False
            assert "wrong" not in str(health)
    finally:
        server.stop()


def test_a_node_that_joined_later_knows_who_left_lately(redis_server):
    with running_cluster(redis_server.url, 1) as cluster:
        (a,) = cluster.nodes
        watcher = a.client()
        tab = a.client()
        tab.emit("userOnline", {"userId": "gone", "team": "red"})
        tab.disconnect()
        left = watcher.wait_change("gone", "offline")
        late = cluster.add_node("n2")  # it never saw "gone"
        answers = [
            node.v2_client().call("getUsersStatus", {"userIds": ["gone"]})["users"][0]
            for node in (a, late)
        ]
        assert answers[0] == answers[1]
        assert (answers[1]["status"], answers[1]["lastSeen"], answers[1]["team"]) == (
            "offline",
            left["lastSeen"],
            "red",
        )


# --- the command line ----------------------------------------------------------------


def _serve(*args: str, env: dict | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "presence_core", "serve", "--no-db", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--node-timeout", "0"], None, "--node-timeout must be between 1 and 3600 seconds"),
        (["--node-id", " "], None, "--node-id cannot be empty"),
        (["--redis", "http://127.0.0.1:6379"], None, "must be a redis://, rediss:// or unix://"),
        ([], {"PRESENCE_REDIS_URL": "localhost:6379"}, "must be a redis://, rediss:// or unix://"),
    ],
)
def test_cluster_flags_refused_in_one_line(args, env, message):
    result = _serve(*args, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_serve_joins_the_cluster_named_by_the_variable(redis_server):
    """PRESENCE_REDIS_URL alone makes `presence serve` a node; with --port 0 it prints
    the real port, its default node id is host:port, and its sids carry the tag."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "serve", "--no-db", "--port", "0"],
        env=base | {"PRESENCE_REDIS_URL": redis_server.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("presence server listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            health = json.load(answer)
        assert health["cluster"]["node"] == f"127.0.0.1:{port}"
        assert health["cluster"]["redis"] is True and health["cluster"]["ready"] is True
        url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
        with urllib.request.urlopen(url, timeout=10) as answer:
            opening = answer.read().decode()
        assert f'"sid":"127_0_0_1_{port}.' in opening
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


# --- the mirror: entries and answers applied in any overlap ----------------------------

_entries = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["online", "away", "offline"])),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(entries=_entries, early=st.sets(st.integers(0, 29)))
def test_the_mirror_applies_each_change_once_whatever_arrives_twice(entries, early):
    """Transitions reach a node's mirror twice: from the script's answer (for the node
    that made them, at once) and from the stream (everyone, later, in order). Whatever
    subset arrived early, the mirror ends as the last transition of each user says, and
    every stream entry is told to clients exactly once."""
    told: list[tuple[str, str]] = []

    async def publish(user, status, moment, reason) -> None:
        told.append((user.key, status))

    link = ClusterLink("redis://127.0.0.1:1/0", lambda: "n1", lambda: 0)  # never called
    state = ClusterState(link, publish, None, now=lambda: from_ms(10**12), settle_after=1)
    at = 10**12
    stream: list[dict] = []
    for i, (key, status) in enumerate(entries):
        at += 1
        fields = {"user": key, "status": status, "at": str(at), "reason": "r", "wire": '"x"'}
        stream.append(fields)
        if i in early:  # this node made it: the script's answer came first
            state.learn(
                {
                    "user": key,
                    "present": status != "offline",
                    "status": status,
                    "since": str(at),
                    "lc": str(at),
                    "wire": '"x"',
                }  # fmt: skip
            )
    for i, fields in enumerate(stream):
        asyncio.run(state.deliver(fields))
        # what clients read is what they were told: the entries delivered so far
        told_so_far: dict[str, str] = {}
        for e in stream[: i + 1]:
            told_so_far[e["user"]] = e["status"]
        assert {k: u.status for k, u in state.users.items()} == {
            k: s for k, s in told_so_far.items() if s != "offline"
        }
        # the node's own decisions use the latest it knows, never going back in time
        known: dict[str, str] = {}
        for j, e in enumerate(stream):
            if j <= i or j in early:
                known[e["user"]] = e["status"]
        for user in ("u1", "u2", "u3"):
            expected = known.get(user)
            assert state.status_of(user) == (None if expected in (None, "offline") else expected)
    last: dict[str, str] = {}
    for key, status in entries:
        last[key] = status
    assert {k: u.status for k, u in state.users.items()} == {
        k: s for k, s in last.items() if s != "offline"
    }
    assert told == [(f["user"], f["status"]) for f in stream]
    assert set(state.departed) == {k for k, s in last.items() if s == "offline"}


def test_a_redis_over_tls(tmp_path):
    """rediss:// URLs: the nodes talk to Redis over TLS, verifying its certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"

    def answers() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=1) as r:
                return bool(r.ping())
        except redis.exceptions.RedisError:
            return False

    try:
        wait_for(answers, what="redis-server over TLS")
        with running_cluster(url, 2) as cluster:
            a, b = cluster.nodes
            watcher = b.client()
            a.client().emit("userOnline", {"userId": "tls"})
            watcher.wait_change("tls", "online")
            assert cluster.health(a)["cluster"]["redis"] is True
    finally:
        server.terminate()
        server.wait(10)


def test_an_outbox_past_its_bound_reconciles_when_redis_answers(redis_server):
    """The outbox keeps the oldest operations (replayed with their times) and refuses
    the rest; when Redis answers, the node makes Redis hold exactly its connections:
    what it could not say is made then, inferred, reason reconcile."""
    with running_cluster(redis_server.url, 2, grace=0.1) as cluster:
        a, b = cluster.nodes
        watcher = b.client()
        x, z = a.client(), a.client()
        x.emit("userOnline", {"userId": "x"})
        z.emit("userOnline", {"userId": "z"})
        gone = a.client()
        gone.emit("userOnline", {"userId": "gone"})
        cluster.wait_agree({"x", "z", "gone"})
        a.server.cluster.state.outbox.limit = 2  # (a small bound, to reach it)
        redis_server.pause()
        try:
            x.disconnect()  # kept: x offline, with its time
            wait_for(lambda: cluster.health(a)["cluster"]["outbox"] == 1, what="x's part kept")
            y = a.client()
            y.emit("userOnline", {"userId": "y"})  # kept
            z.emit("userStatus", {"userId": "z", "status": "busy"})  # refused
            w = a.client()
            w.emit("userOnline", {"userId": "w"})  # refused
            gone.disconnect()  # refused
            wait_for(
                lambda: cluster.health(a)["cluster"]["outbox_dropped"] >= 3,
                what="operations refused",
            )
        finally:
            redis_server.resume()
        cluster.wait_agree({"y", "z", "w"}, timeout=20)
        watcher.wait_change("z", "busy", timeout=15)
        by_user = {
            e["user"]: (e["status"], e["reason"], e["inferred"])
            for e in _events(redis_server.url)[3:]
        }
        assert by_user == {
            "x": ("offline", "disconnect", "0"),
            "y": ("online", "userOnline", "0"),
            "w": ("online", "reconcile", "1"),
            "gone": ("offline", "reconcile", "1"),
            "z": ("busy", "userStatus", "1"),  # asked for, but when is not known
        }
        assert cluster.health(a)["cluster"]["outbox"] == 0
        del w, y


def test_a_reaped_nodes_unwritten_entries_are_claimed_at_once(redis_server, engine):
    """What a dead node's writer took and did not acknowledge is claimed as soon as
    the node is reaped (long before it has been idle for twice the node timeout), and
    what an earlier process of a node id took, by its next process at start."""
    with running_cluster(redis_server.url, 1, node_timeout=30.0) as cluster:
        (a,) = cluster.nodes  # no database
        a.client().emit("userOnline", {"userId": "d1"})
        a.client().emit("userOnline", {"userId": "d2"})
        cluster.wait_agree({"d1", "d2"})
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            r.xgroup_create("presence:events", "writers", id="0")
            r.xreadgroup("writers", "dead", {"presence:events": ">"}, count=1)  # d1's
            r.xreadgroup("writers", "n7", {"presence:events": ">"}, count=1)  # d2's
    with running_cluster(redis_server.url, 0, engine=engine, node_timeout=30.0) as cluster:
        node = cluster.add_node("n7")  # the next process of n7: takes back its own

        def users() -> list[str]:
            with engine.connect() as conn:
                return (
                    conn.execute(text("select user_id from presence_transitions order by user_id"))
                    .scalars()
                    .all()
                )

        wait_for(lambda: users() == ["d2"], timeout=15, what="n7's own entry written")
        recorder = node.server.cluster.recorder
        node.loop.run(_call_soon(recorder.claim_from, ["dead"]))  # as the reaper does
        wait_for(lambda: users() == ["d1", "d2"], timeout=15, what="the dead node's entry")
        assert recorder.claimed_from_dead == 1
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            wait_for(
                lambda: r.xpending("presence:events", "writers")["pending"] == 0,
                what="all acknowledged",
            )


async def _call_soon(fn, *args) -> None:
    fn(*args)


def test_a_node_back_in_touch_with_redis_waits_a_node_timeout_before_reaping(redis_server):
    """After an outage every node's last sign of life is old; the first node back must
    not take the others for dead: a node reaps only after a whole node timeout in
    touch with Redis, by when every live node has renewed."""
    with running_cluster(redis_server.url, 1, node_timeout=4.0) as cluster:
        (a,) = cluster.nodes
        link, liveness = a.server.cluster.link, a.server.cluster.liveness
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            old = int(time.time() * 1000) - 60_000
            r.zadd("presence:nodes", {"silent": old})  # a node not heard of for a minute
            rounds = a.loop.run(_call(lambda: liveness.rounds))
            a.loop.run(_call(lambda: link.down(ConnectionError("as in an outage"))))
            wait_for(
                lambda: link.reachable and liveness.rounds >= rounds + 2,
                what="two liveness rounds back in touch",
            )
            assert r.zscore("presence:nodes", "silent") is not None  # not yet
            wait_for(
                lambda: r.zscore("presence:nodes", "silent") is None,
                timeout=15,
                what="reaped once in touch for a node timeout",
            )
            assert link.healthy_for() >= 4.0


async def _call(fn):
    return fn()


def test_a_snapshot_holds_what_the_node_has_told_and_no_more(redis_server):
    """A change this node made is in its clients' snapshots only once the stream told
    it: a watcher subscribing in between gets it in a diff, once, not in both."""
    with running_cluster(redis_server.url, 1) as cluster:
        (a,) = cluster.nodes
        reader = a.server.cluster.stream
        a.loop.run(_cancel(a.server.cluster._tasks[1]))  # deliveries wait
        tab = a.client()
        assert tab.call("userOnline", {"userId": "new", "team": "red"})["ok"]
        # decided on the script's answer, before the stream told anything
        assert tab.call("userStatus", {"userId": "new", "status": "away"})["ok"]
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
            assert r.xlen("presence:events") == 2
        v2 = a.v2_client()
        ack = v2.call("subscribe", {"all": True})
        assert ack["users"] == []  # not told yet
        a.server.cluster._tasks[1] = a.loop.run(_start(reader.run()))
        wait_for(lambda: len(v2.diff_changes("new")) == 2, what="both changes in diffs")
        assert v2.diff_changes("new") == [("new", "online"), ("new", "away")]
        again = a.v2_client().call("subscribe", {"all": True})
        assert [(u["userId"], u["status"]) for u in again["users"]] == [("new", "away")]
