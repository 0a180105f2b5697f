"""The cluster's Lua scripts decide every transition: their decisions, against a real
redis-server (the ``redis_server`` fixture), one script call at a time.

Times are milliseconds; each test reads back the stream ``presence:events``, the only
record of transitions, and the user hashes.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_core.server.cluster_scripts import ClusterScripts

E = "epoch-1"


class Scripts:
    """ClusterScripts on a real Redis, called synchronously (one loop per test)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(url, decode_responses=True)
        self.scripts = ClusterScripts(self.client, 10_000)
        self.sync = redis.Redis.from_url(url, decode_responses=True)

    def __getattr__(self, name: str):
        method = getattr(self.scripts, name)
        return lambda *a, **k: self.loop.run_until_complete(method(*a, **k))

    def events(self) -> list[dict]:
        return [fields for _id, fields in self.sync.xrange("presence:events")]

    def transitions(self) -> list[tuple[str, str, int, str]]:
        return [(f["user"], f["status"], int(f["at"]), f["reason"]) for f in self.events()]

    def present(self) -> set[str]:
        return self.sync.smembers("presence:present")

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.sync.close()


@pytest.fixture
def s(redis_server):
    scripts = Scripts(redis_server.url)
    yield scripts
    scripts.close()


def test_register_creates_the_epoch_once(s):
    first = s.register("n1", 1000, E, fresh=True)
    second = s.register("n2", 1000, "another", fresh=True)
    assert first["epoch"] == E and first["created"] is True
    assert second["epoch"] == E and second["created"] is False
    assert s.sync.zrange("presence:nodes", 0, -1) == ["n1", "n2"]


def test_two_tabs_on_two_nodes_one_online_one_offline(s):
    s.register("n1", 1000, E, fresh=True)
    s.register("n2", 1000, E, fresh=True)
    a = s.join(E, "n1", 1001, "a", "u1", 1, {"name": "Ann", "team": "t"})
    b = s.join(E, "n2", 1005, "b", "u1", 1, {})
    assert (a["r"], b["r"]) == ("t", "n")
    assert b["present"] is True and b["status"] == "online" and b["team"] == "t"
    assert s.part(E, "n1", 1010, "a", "u1", "disconnect")["r"] == "n"  # another tab counts
    assert s.present() == {"u1"}
    gone = s.part(E, "n2", 1020, "b", "u1", "disconnect")
    assert gone["r"] == "t" and gone["present"] is False
    assert s.transitions() == [
        ("u1", "online", 1001, "userOnline"),
        ("u1", "offline", 1020, "disconnect"),
    ]
    assert s.present() == set()
    first = s.events()[0]
    assert json.loads(first["wire"]) == 1 and first["name"] == "Ann" and first["epoch"] == E
    # a part of a connection that no longer counts changes nothing
    assert s.part(E, "n2", 1030, "b", "u1", "disconnect")["r"] == "g"
    assert len(s.events()) == 2


def test_one_users_transitions_strictly_increase(s):
    s.register("n1", 1000, E, fresh=True)
    s.join(E, "n1", 2000, "a", "u1", "u1", {})
    s.status(E, "n1", 2000, "a", "u1", "away", "userStatus")  # same millisecond
    s.part(E, "n1", 1990, "a", "u1", "disconnect")  # an earlier clock reading
    times = [at for _u, _s, at, _r in s.transitions()]
    assert times == [2000, 2001, 2002]


def test_offline_is_dated_when_the_last_connection_stopped_counting(s):
    s.register("n1", 1000, E, fresh=True)
    s.join(E, "n1", 1000, "a", "u1", "u1", {})
    s.join(E, "n1", 1000, "b", "u1", "u1", {})
    s.part(E, "n1", 1500, "b", "u1", "disconnect")  # closed later, its grace ends first
    s.part(E, "n1", 1200, "a", "u1", "disconnect")
    assert s.transitions()[-1] == ("u1", "offline", 1500, "disconnect")


def test_status_only_from_a_counting_connection_and_only_when_it_differs(s):
    s.register("n1", 1000, E, fresh=True)
    s.join(E, "n1", 1000, "a", "u1", "u1", {})
    assert s.status(E, "n1", 1100, "a", "u1", "online", "userStatus")["r"] == "n"
    assert s.status(E, "n1", 1100, "zz", "u1", "away", "userStatus")["r"] == "g"
    answer = s.status(E, "n1", 1200, "a", "u1", "away", "userStatus")
    assert answer["r"] == "t" and answer["status"] == "away" and answer["since"] == "1200"
    assert [t[1] for t in s.transitions()] == ["online", "away"]


def test_markers_for_a_reaped_node_and_another_epoch_change_nothing(s):
    s.register("n1", 1000, E, fresh=True)
    assert s.join(E, "n9", 1000, "a", "u1", "u1", {})["r"] == "reaped"
    assert s.join("old-epoch", "n1", 1000, "a", "u1", "u1", {})["r"] == "epoch"
    assert s.alive("old-epoch", "n1", 1000)["r"] == "epoch"
    assert s.alive(E, "n9", 1000)["r"] == "reaped"
    assert s.events() == [] and s.present() == set()
    assert not s.sync.exists("presence:user:u1")


def test_reap_takes_a_dead_nodes_only_tabs_at_its_last_sign_of_life(s):
    s.register("n1", 1000, E, fresh=True)
    s.register("n2", 1000, E, fresh=True)
    s.join(E, "n1", 1000, "a", "only", "only", {})
    s.join(E, "n1", 1000, "b", "both", "both", {})
    s.join(E, "n2", 1000, "c", "both", "both", {})
    s.join(E, "n1", 1800, "d", "late", "late", {})  # came online after n1's last sign
    s.alive(E, "n1", 1500)
    s.alive(E, "n2", 20_000)
    assert s.reap(E, "n2", 16_000, 15_000) == {"r": "ok", "reaped": [], "transitions": 0}
    answer = s.reap(E, "n2", 16_600, 15_000)
    assert answer["reaped"] == ["n1"] and answer["transitions"] == 2
    offline = [t for t in s.transitions() if t[1] == "offline"]
    assert sorted(offline) == [
        ("late", "offline", 1801, "node_down"),  # after its online, never at it
        ("only", "offline", 1500, "node_down"),
    ]
    assert s.present() == {"both"}
    assert s.sync.zrange("presence:nodes", 0, -1) == ["n2"]
    assert not s.sync.exists("presence:node:n1")
    assert s.reap(E, "n2", 30_000, 15_000)["reaped"] == []  # the second runner finds nothing
    # the frozen node wakes: its calls say so, and it changes nothing until registered again
    assert s.part(E, "n1", 31_000, "b", "both", "disconnect")["r"] == "reaped"
    assert s.present() == {"both"}


def test_a_reaper_never_reaps_itself(s):
    s.register("n1", 1000, E, fresh=True)
    s.join(E, "n1", 1000, "a", "u1", "u1", {})
    assert s.reap(E, "n1", 50_000, 15_000)["reaped"] == []
    assert s.present() == {"u1"}


def test_a_fresh_process_of_a_node_leaves_the_earlier_ones_connections_to_the_reaper(s):
    s.register("n1", 1000, E, fresh=True)
    s.register("n2", 1000, E, fresh=True)
    s.join(E, "n1", 1000, "a", "gone", "gone", {})
    s.join(E, "n1", 1000, "b", "back", "back", {})
    s.register("n1", 5000, E, fresh=False)  # the same process again: nothing moves
    assert s.sync.hkeys("presence:node:n1") == ["a", "b"]
    answer = s.register("n1", 9000, E, fresh=True)  # a new process (the old one crashed)
    assert answer["ghost"] == "n1~5000"
    assert s.sync.hkeys("presence:node:n1") == []
    assert s.present() == {"gone", "back"}  # nobody offline yet
    s.join(E, "n2", 9500, "c", "back", "back", {})  # reconnected elsewhere in time
    s.alive(E, "n2", 20_100)
    s.alive(E, "n1", 20_100)
    assert s.reap(E, "n2", 20_100, 15_000)["reaped"] == ["n1~5000"]
    assert [t for t in s.transitions() if t[1] == "offline"] == [
        ("gone", "offline", 5000, "node_down")  # at the old process's last sign of life
    ]
    assert s.present() == {"back"}


def test_restore_keeps_what_the_mirror_knew_and_infers_the_rest(s):
    s.register("n1", 9000, E, fresh=True)
    known = {"sid": "a", "user": "u1", "wire": "1", "names": "{\"team\":\"t\"}",
             "status": "away", "since": 5000, "lc": 5000}  # fmt: skip
    unknown = {"sid": "b", "user": "u2", "wire": '"u2"', "names": ""}
    answer = s.restore(E, "n1", 9000, [known, unknown])
    assert answer["transitions"] == 1
    assert s.present() == {"u1", "u2"}
    assert s.sync.hmget("presence:user:u1", "status", "since", "team") == ["away", "5000", "t"]
    (event,) = s.events()
    assert (event["user"], event["status"], event["reason"], event["inferred"]) == (
        "u2",
        "online",
        "reconcile",
        "1",
    )
    # the restored user's next transition comes after what the mirror knew
    s.status(E, "n1", 4000, "a", "u1", "online", "userStatus")
    assert s.transitions()[-1][2] == 5001


def test_settle_ends_users_nobody_restored_once(s):
    s.register("n1", 9000, E, fresh=True)
    s.restore(E, "n1", 9000, [{"sid": "a", "user": "kept", "wire": "1", "names": "",
                               "status": "online", "since": 3000, "lc": 3000}])  # fmt: skip
    old = [
        {"user": "kept", "wire": "1", "names": "", "since": 3000, "lc": 3000},
        {"user": "lost", "wire": "2", "names": '{"team":"t"}', "since": 7000, "lc": 7000},
        {"user": "early", "wire": "3", "names": "", "since": 2000, "lc": 2000},
    ]
    assert s.settle(E, "n1", 20_000, old, 6000)["transitions"] == 2
    assert s.settle(E, "n1", 21_000, old, 6000)["transitions"] == 0  # another node: no-op
    settled = sorted(
        (f["user"], f["status"], f["at"], f["reason"], f["inferred"]) for f in s.events()
    )
    assert settled == [
        ("early", "offline", "6000", "reconcile", "1"),
        ("lost", "offline", "7001", "reconcile", "1"),  # never before the status began
    ]
    assert s.present() == {"kept"}


# --- the scripts against a model of who is present -------------------------------------

NODES = ("n1", "n2", "n3")
USERS = ("u1", "u2", "u3")

_node, _sid = st.sampled_from(NODES), st.integers(0, 3)
_statuses = st.sampled_from(("online", "away", "busy"))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("join"), _node, _sid, st.sampled_from(USERS)),
        st.tuples(st.just("part"), _node, _sid, st.sampled_from(USERS)),
        st.tuples(st.just("status"), _node, _sid, _statuses),
        st.tuples(st.just("kill"), _node, st.just(0), st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=operations)
def test_scripts_agree_with_a_model_of_who_is_present(redis_server, ops):
    """Random joins, parts, statuses and node deaths (a reap) on three nodes: the
    present users, their statuses and the transitions match a brute-force model
    (a user is present while any connection counts; a transition exactly when the
    user's presence or status changes; one user's times strictly increase)."""
    s = Scripts(redis_server.url)
    try:
        s.sync.flushdb()
        conns: dict[tuple[str, str], str] = {}  # (node, sid) -> user
        status: dict[str, str] = {}
        expected: list[tuple[str, str]] = []
        now = 1000
        alive = set()
        for node in NODES:
            s.register(node, now, E, fresh=True)
            alive.add(node)
        for kind, node, n, arg in ops:
            now += 10
            sid = f"s{n}"
            if node not in alive:  # a dead node comes back as a new process
                s.register(node, now, E, fresh=True)
                alive.add(node)
            if kind == "join":
                user = conns.get((node, sid))
                if user is not None and user != arg:
                    continue  # the server parts a connection before it speaks for another
                s.join(E, node, now, sid, arg, arg, {})
                if arg not in status:
                    status[arg] = "online"
                    expected.append((arg, "online"))
                conns[(node, sid)] = arg
            elif kind == "part":
                user = conns.pop((node, sid), None)
                s.part(E, node, now, sid, user or arg, "disconnect")
                if user is not None and user not in conns.values():
                    del status[user]
                    expected.append((user, "offline"))
            elif kind == "status":
                user = conns.get((node, sid))
                if user is None:
                    continue
                s.status(E, node, now, sid, user, arg, "userStatus")
                if status[user] != arg:
                    status[user] = arg
                    expected.append((user, arg))
            elif alive - {node}:  # someone must be left to reap it
                s.sync.zadd("presence:nodes", {node: now - 20_000})  # its last sign long ago
                for other in alive - {node}:
                    s.alive(E, other, now)
                s.reap(E, next(iter(alive - {node})), now, 15_000)
                alive.discard(node)
                for key in [k for k in conns if k[0] == node]:
                    user = conns.pop(key)
                    if user not in conns.values():
                        del status[user]
                        expected.append((user, "offline"))
        got = s.transitions()
        assert [(u, st_) for u, st_, _at, _r in got] == expected
        assert s.present() == set(status)
        for user, st_ in status.items():
            assert s.sync.hget(f"presence:user:{user}", "status") == st_
        for user in USERS:
            times = [at for u, _s, at, _r in got if u == user]
            assert times == sorted(set(times))
    finally:
        s.close()
