"""The presence cluster (issue 14), proved with real processes: ``presence serve --redis``
nodes, a real ``redis-server``, real Socket.IO clients (the guide's protocol and
version 2) and the test's PostgreSQL.

Every check of "exactly once" is made after a fence (:meth:`Cluster.fence`): a marker
transition that every node delivers after everything decided before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.cluster_harness import (
    NODE_TIMEOUT,
    REAP_SLACK,
    Cluster,
    Partition,
    as_time,
    cluster,
    doubled,
    is_fence,
    no_repeats,
    transitions,
    wait_rows,
)
from tests.nodejs import NODE_DIR, node_available
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

# the reconnect test's grace period, s (the harness's 1 s is for everything else)
RELOAD_GRACE = 5.0


def online_everywhere(group: Cluster, nodes=None) -> dict[str, dict[str, str]]:
    """``getOnlineUsers`` of every live node (asked by its legacy watcher), fences left out."""
    answers = {}
    for node in nodes or group.live_nodes():
        [legacy] = [w for w in group.watchers_of(node) if not w.v2 and w.connected]
        answers[node.node_id] = {u: s for u, s in legacy.online_users().items() if not is_fence(u)}
    return answers


def wait_agree(group: Cluster, expected: dict[str, str], nodes=None, timeout: float = 20):
    """Wait until every live node's ``getOnlineUsers`` is ``expected``."""
    last = {}

    def agree() -> bool:
        nonlocal last
        last = online_everywhere(group, nodes)
        return all(answer == expected for answer in last.values())

    try:
        wait_for(agree, timeout, interval=0.2, what=f"every node answering {expected}")
    except AssertionError as error:
        raise AssertionError(f"{error}: {last}\n{group.logs()}") from None


def test_two_tabs_on_two_nodes_one_user_offline_once_everywhere(
    tmp_path, redis_server, database_url, engine
):
    with cluster(tmp_path, redis_server.url, 2, database_url) as group:
        group.watch()
        first = group.tab("n1", 7, name="Ann")
        group.wait_seen(7, ["online"])
        second = group.tab("n2", 7, name="Ann")
        wait_agree(group, {"7": "online"})

        first.leave()  # one tab says goodbye: the other still counts, on the other node
        group.fence()
        group.wait_seen(7, ["online"])
        wait_agree(group, {"7": "online"})

        second.close()  # the last tab goes without a goodbye: offline after the grace
        group.wait_seen(7, ["online", "offline"], timeout=group.grace + 20)
        group.fence("n2")
        group.wait_seen(7, ["online", "offline"])
        wait_agree(group, {})
        offline = [p for w in group.watchers for p in w.transition_payloads(7)][-1]
        assert offline["reason"] == "disconnect"

        rows = wait_rows(engine, 7, ["online", "offline"])
        assert [(r["status"], r["reason"]) for r in rows] == [
            ("online", "userOnline"),
            ("offline", "disconnect"),
        ]
        assert not any(r["inferred"] for r in rows)
        # every node told its clients the same moment, the one the database holds
        moments = {p["lastSeen"] for w in group.watchers for p in w.transition_payloads(7)}
        assert len(moments) == 2
        assert {as_time(m.replace("Z", "+00:00")) for m in moments} == {
            r["occurred_at"] for r in rows
        }


def test_reconnecting_to_another_node_within_the_grace_changes_nothing(
    tmp_path, redis_server, database_url, engine
):
    # a grace period long enough that the reconnect falls inside it on any machine (a
    # reload takes well under a second even at load 8), instead of racing a short one
    with cluster(tmp_path, redis_server.url, 2, database_url, grace=RELOAD_GRACE) as group:
        group.watch()
        user = "u-8"
        tab = group.tab("n1", user)
        group.wait_seen(user, ["online"])
        closed = time.monotonic()
        tab.close()  # a reload: the connection closes without a goodbye...
        again = group.tab("n2", user)  # ...and the page comes back through another node
        assert time.monotonic() - closed < group.grace, "the reconnect took the whole grace"
        # the proof is that n1's grace period runs out with nothing to say: give it the time
        time.sleep(group.grace + 1)
        group.fence("n1")
        group.wait_seen(user, ["online"])
        wait_agree(group, {user: "online"})
        assert [r["status"] for r in transitions(engine, user)] == ["online"]

        again.leave()
        group.wait_seen(user, ["online", "offline"])
        rows = wait_rows(engine, user, ["online", "offline"])
        assert [(r["status"], r["reason"]) for r in rows] == [
            ("online", "userOnline"),
            ("offline", "userOffline"),
        ]


def test_a_killed_node_takes_offline_exactly_the_users_it_alone_held(
    tmp_path, redis_server, database_url, engine
):
    with cluster(tmp_path, redis_server.url, 3, database_url) as group:
        group.watch()
        tabs = [
            group.tab("n3", "only-1"),
            group.tab("n3", "only-2", v2=True),
            group.tab("n3", "both-1"),
            group.tab("n1", "both-1"),
            group.tab("n3", "both-2", v2=True),
            group.tab("n2", "both-2"),
            group.tab("n1", "elsewhere"),
        ]
        tabs[1].set_status("busy")
        users = {"only-1", "only-2", "both-1", "both-2", "elsewhere"}
        wait_agree(group, {u: "busy" if u == "only-2" else "online" for u in users})
        survivors = [group["n1"], group["n2"]]
        watchers = [w for n in survivors for w in group.watchers_of(n)]

        killed_at = group["n3"].kill()
        started = time.monotonic()
        group.wait_seen(
            "only-1", ["online", "offline"], watchers, timeout=NODE_TIMEOUT + REAP_SLACK
        )
        group.wait_seen(
            "only-2", ["online", "busy", "offline"], watchers, timeout=NODE_TIMEOUT + REAP_SLACK
        )
        took = time.monotonic() - started
        # not before the timeout (less the second between two signs of life), not long after
        assert NODE_TIMEOUT - 1.5 <= took <= NODE_TIMEOUT + REAP_SLACK, took
        group.fence("n2")
        for user in ("only-1",):
            group.wait_seen(user, ["online", "offline"], watchers)
        group.wait_seen("only-2", ["online", "busy", "offline"], watchers)
        for user in ("both-1", "both-2", "elsewhere"):
            group.wait_seen(user, ["online"], watchers)
        for w in watchers:
            for user in ("only-1", "only-2"):
                assert w.transition_payloads(user)[-1]["reason"] == "node_down"
        wait_agree(group, {"both-1": "online", "both-2": "online", "elsewhere": "online"})

        for user, statuses in [
            ("only-1", ["online", "offline"]),
            ("only-2", ["online", "busy", "offline"]),
        ]:
            rows = wait_rows(engine, user, statuses)
            assert [r["status"] for r in rows] == statuses
            offline = rows[-1]
            assert offline["reason"] == "node_down" and not offline["inferred"]
            # dated at the node's last sign of life: before the kill, within a timeout of it
            last_sign = offline["occurred_at"].timestamp()
            assert killed_at - NODE_TIMEOUT <= last_sign <= killed_at + 0.5, last_sign - killed_at
        for user in ("both-1", "both-2", "elsewhere"):
            assert [r["status"] for r in transitions(engine, user)] == ["online"]


def test_a_frozen_node_that_wakes_after_the_timeout_causes_no_duplicate(
    tmp_path, redis_server, database_url, engine
):
    with cluster(tmp_path, redis_server.url, 3, database_url) as group:
        group.watch()
        alone = group.tab("n3", "frozen-alone")
        away = group.tab("n3", "frozen-away", v2=True)
        away.set_status("away")
        group.tab("n3", "frozen-shared")
        group.tab("n1", "frozen-shared")
        group.tab("n2", "awake")
        wait_agree(
            group,
            {
                "frozen-alone": "online",
                "frozen-away": "away",
                "frozen-shared": "online",
                "awake": "online",
            },
        )
        awake = [w for n in ("n1", "n2") for w in group.watchers_of(n)]

        group["n3"].freeze()
        # longer than the timeout: the others reap it (its lone users go offline)
        group.wait_seen(
            "frozen-alone", ["online", "offline"], awake, timeout=NODE_TIMEOUT + REAP_SLACK
        )
        group.wait_seen("frozen-away", ["online", "away", "offline"], awake)
        for w in awake:
            for user in ("frozen-alone", "frozen-away"):
                assert w.transition_payloads(user)[-1]["reason"] == "node_down"
        group["n3"].thaw()

        # the woken node either drops the connections it held or registers them again
        # (their users back with the status they had); either way every node, the woken
        # one included, ends up answering the same
        def model() -> dict[str, str]:
            present = {"awake": "online", "frozen-shared": "online"}
            if alone.connected:
                present["frozen-alone"] = "online"
            if away.connected:
                present["frozen-away"] = "away"
            return present

        def settled() -> bool:
            answers = online_everywhere(group, [group[n] for n in ("n1", "n2")])
            fresh = group.client("n3")
            try:
                answers["n3"] = {u: s for u, s in fresh.online_users().items() if not is_fence(u)}
            finally:
                fresh.close()
            return all(a == model() for a in answers.values())

        wait_for(settled, 30, interval=0.5, what="every node agreeing after the wake-up")
        group.fence("n3")
        group.fence("n1")

        users = ("frozen-alone", "frozen-away", "frozen-shared", "awake")
        for w in group.watchers:
            if w.v2 and w.seq_jumps():
                w.subscribe_all()  # the protocol's answer to a seq jump: a new snapshot
        for w in [w for w in group.watchers if w.connected]:
            assert w.present() == model(), (w.node.node_id, w.v2, w.present())
            for user in users:
                assert not doubled(w.statuses(user)), (w.node.node_id, user, w.statuses(user))
        reference = awake[0]
        for w in awake:
            assert w.statuses("frozen-shared") == ["online"]
            assert w.statuses("awake") == ["online"]
            expected = ["online", "offline"] + (["online"] if alone.connected else [])
            assert w.statuses("frozen-alone") == expected
            for user in users:
                assert w.statuses(user) == reference.statuses(user), (w.node.node_id, user)

        # the history: exactly what every awake node delivered, nothing doubled
        def recorded() -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for row in transitions(engine):
                found.setdefault(row["user_id"], []).append(row["status"])
            return found

        delivered = {user: reference.statuses(user) for user in users}
        wait_for(lambda: recorded() == delivered, 20, what=f"the history {delivered}")
        assert no_repeats(transitions(engine)) == []


def test_redis_paused_loses_no_change_of_connections_that_stayed_up(
    tmp_path, redis_server, database_url, engine
):
    """Redis frozen for 5 s, longer than the node timeout (so every node's liveness lapses
    too, and nobody may be reaped for it): the nodes keep their clients, say so on
    /health, and every change made meanwhile reaches everyone and the database."""
    with cluster(tmp_path, redis_server.url, 2, database_url) as group:
        group.watch()
        one = group.tab("n1", "p-1")
        two = group.tab("n2", "p-2", v2=True)
        both = [group.tab("n1", "p-3"), group.tab("n2", "p-3")]
        wait_agree(group, {"p-1": "online", "p-2": "online", "p-3": "online"})

        redis_server.pause()
        paused = time.monotonic()
        one.set_status("away")
        two.set_status("busy")
        both[0].leave()  # one of two tabs: no transition
        two.set_status("online")
        one.set_status("lunch")
        for node in group.nodes.values():
            wait_for(
                lambda node=node: (node.cluster_health() or {}).get("redis") is False,
                5,
                what=f"{node.node_id}'s /health saying Redis does not answer",
            )
        time.sleep(max(0.0, 5 - (time.monotonic() - paused)))  # the outage lasts 5 s
        redis_server.resume()

        group.wait_seen("p-1", ["online", "away", "lunch"], timeout=30)
        group.wait_seen("p-2", ["online", "busy", "online"])
        group.fence("n1")
        group.fence("n2")
        group.wait_seen("p-1", ["online", "away", "lunch"])
        group.wait_seen("p-2", ["online", "busy", "online"])
        group.wait_seen("p-3", ["online"])
        assert all(w.connected for w in group.watchers + [one, two, both[1]])
        wait_agree(group, {"p-1": "lunch", "p-2": "online", "p-3": "online"})
        for user, statuses in [
            ("p-1", ["online", "away", "lunch"]),
            ("p-2", ["online", "busy", "online"]),
            ("p-3", ["online"]),
        ]:
            wait_rows(engine, user, statuses)
            rows = transitions(engine, user)
            assert [r["status"] for r in rows] == statuses, (user, rows)
            assert not any(r["inferred"] for r in rows)
            times = [r["occurred_at"] for r in rows]
            assert times == sorted(times) and len(set(times)) == len(times)


def test_redis_restarted_empty_is_rebuilt_without_invented_transitions(
    tmp_path, redis_server, database_url, engine
):
    with cluster(tmp_path, redis_server.url, 3, database_url) as group:
        group.watch()
        group.tab("n1", "e-1")
        away = group.tab("n2", "e-2", v2=True)
        away.set_status("away")
        group.tab("n1", "e-3")
        group.tab("n2", "e-3")
        busy = group.tab("n1", "e-4")
        group.tab("n3", "e-gone")  # its only node dies while Redis is gone
        before = {
            "e-1": "online",
            "e-2": "away",
            "e-3": "online",
            "e-4": "online",
            "e-gone": "online",
        }
        wait_agree(group, before)
        for user, statuses in [
            ("e-1", ["online"]),
            ("e-2", ["online", "away"]),
            ("e-3", ["online"]),
            ("e-4", ["online"]),
            ("e-gone", ["online"]),
        ]:
            wait_rows(engine, user, statuses)
        survivors = [w for n in ("n1", "n2") for w in group.watchers_of(n)]

        redis_server.kill()
        group["n3"].kill()
        busy.set_status("busy")  # while Redis is gone: kept, and sent when it is back
        redis_server.start()  # empty: no epoch, no nodes, no users

        # rebuilt from the nodes' connections: everyone still connected is present as
        # before; e-gone, whom nobody restores, goes offline (inferred: nobody saw when)
        after = {k: v for k, v in before.items() if k != "e-gone"} | {"e-4": "busy"}
        wait_agree(group, after, timeout=NODE_TIMEOUT + REAP_SLACK + 20)
        group.wait_seen("e-gone", ["online", "offline"], survivors, timeout=30)
        group.fence("n1")
        group.fence("n2")
        for user, statuses in [
            ("e-1", ["online"]),
            ("e-2", ["online", "away"]),
            ("e-3", ["online"]),
            ("e-4", ["online", "busy"]),
        ]:
            group.wait_seen(user, statuses, survivors)
        for w in survivors:
            if w.v2 and w.seq_jumps():
                w.subscribe_all()  # a seq jump is how a re-snapshot is announced
            assert w.present() == after, (w.node.node_id, w.v2, w.present())

        rows = wait_rows(engine, "e-gone", ["online", "offline"])
        assert [r["status"] for r in rows] == ["online", "offline"]
        assert rows[-1]["inferred"] is True
        for user, statuses in [
            ("e-1", ["online"]),
            ("e-2", ["online", "away"]),
            ("e-3", ["online"]),
            ("e-4", ["online", "busy"]),
        ]:
            rows_of_user = wait_rows(engine, user, statuses)
            assert [r["status"] for r in rows_of_user] == statuses, (user, rows_of_user)
            assert not any(r["inferred"] for r in rows_of_user), (user, rows_of_user)
        assert no_repeats(transitions(engine)) == []


def test_a_node_restarted_at_once_under_its_name_does_not_keep_its_dead_connections(
    tmp_path, redis_server, database_url, engine
):
    """systemd restarts a killed node within a second, with the same ``--node-id``: the
    connections the dead process held are gone, and their users must not stay online."""
    with cluster(tmp_path, redis_server.url, 2, database_url) as group:
        group.watch([group["n1"]])
        group.tab("n2", "ghost")
        group.tab("n2", "twice")
        group.tab("n1", "twice")
        wait_agree(group, {"ghost": "online", "twice": "online"}, [group["n1"]])

        group["n2"].kill()
        group["n2"].start()  # same name, same port, a new process
        group.watch([group["n2"]])
        wait_agree(group, {"twice": "online"}, timeout=NODE_TIMEOUT + REAP_SLACK + 10)
        group.fence("n2")
        watcher = group.watchers_of("n1")
        group.wait_seen("ghost", ["online", "offline"], watcher)
        group.wait_seen("twice", ["online"], watcher)
        rows = wait_rows(engine, "ghost", ["online", "offline"])
        assert [r["status"] for r in rows] == ["online", "offline"]
        assert rows[-1]["reason"] == "node_down"
        # what the dead process had read for the history but not written is written by
        # a live node once it has waited long enough (claimed)
        rows = wait_rows(engine, "twice", ["online"], timeout=4 * NODE_TIMEOUT + 20)
        assert [r["status"] for r in rows] == ["online"]


def test_the_guides_node_client_on_one_node_is_heard_on_the_other(tmp_path, redis_server):
    """Node's socket.io-client (long-polling, then the upgrade) plays the guide's flows on
    n1 while guide and version-2 clients watch on n2: both nodes answer alike."""
    assert node_available(), "run `npm ci` in tests/node (make test does)"
    with cluster(tmp_path, redis_server.url, 2) as group:
        far = group.watch([group["n2"]])
        done = subprocess.run(
            ["node", str(NODE_DIR / "guide_client.js"), group["n1"].url],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=NODE_DIR,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        )
        assert done.returncode == 0, f"{done.stderr}\n{done.stdout}\n{group.logs()}"
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["changesAfterRepeat"] == 1  # a second tab and a repeat: silent
        assert [u["status"] for u in seen["listAfterFirstOffline"]] == ["away"]
        assert seen["listWithTeam"][0]["team"] == "Ops"
        assert seen["finalList"] == []
        assert [(c["userId"], c["status"]) for c in seen["watcherChanges"]] == [
            (123, "online"),
            (123, "away"),
            (123, "offline"),
            ("bob", "online"),
            ("bob", "offline"),
        ]
        group.fence("n1")
        group.wait_seen(123, ["online", "away", "offline"], far)
        group.wait_seen("bob", ["online", "offline"], far)
        # the same moments on both nodes, ids with the type the client used
        here = {(c["userId"], c["status"]): c["lastSeen"] for c in seen["watcherChanges"]}
        for watcher in far:
            for change in watcher.transition_payloads(123) + watcher.transition_payloads("bob"):
                assert here[(change["userId"], change["status"])] == change["lastSeen"]


def test_a_node_cut_off_past_the_streams_window_re_snapshots_and_says_so(
    tmp_path, redis_server, database_url, engine
):
    """A node frozen while the stream moved on past what it had read (trimmed here with
    XTRIM, as its MAXLEN does under traffic): it cannot replay what it missed, so it
    re-snapshots, tells its guide clients each difference once and makes its version-2
    clients' ``seq`` jump; after subscribing again they hold what every other node holds."""
    import redis

    with cluster(tmp_path, redis_server.url, 3, database_url, node_timeout=15) as group:
        group.watch()
        mover = group.tab("n1", "w-1")
        leaver = group.tab("n2", "w-2", v2=True)
        group.tab("n2", "w-3")
        wait_agree(group, {"w-1": "online", "w-2": "online", "w-3": "online"})
        cut = group.watchers_of("n3")

        group["n3"].freeze()  # well within the node timeout: nobody reaps it
        mover.set_status("away")
        mover.set_status("busy")
        leaver.leave()
        comer = group.tab("n1", "w-4")
        comer.set_status("away")
        awake = [w for n in ("n1", "n2") for w in group.watchers_of(n)]
        group.wait_seen("w-4", ["online", "away"], awake)
        with redis.Redis.from_url(redis_server.url) as direct:
            direct.xtrim("presence:events", maxlen=1, approximate=False)
        group["n3"].thaw()

        now = {"w-1": "busy", "w-3": "online", "w-4": "away"}
        wait_agree(group, now)
        [legacy] = [w for w in cut if not w.v2]
        [v2] = [w for w in cut if w.v2]
        wait_for(lambda: v2.seq_jumps() == 1, 20, what="a seq jump on n3's version-2 watcher")
        v2.subscribe_all()
        group.fence("n3", jumps=True)
        assert v2.present() == now
        assert legacy.present() == now
        for user in now | {"w-2": "offline"}:
            assert not doubled(legacy.statuses(user)), (user, legacy.statuses(user))
        # the guide's clients heard the differences (an entry n3 had been handed before it
        # froze may come first: "away" for w-1), each once
        assert legacy.statuses("w-1")[-1] == "busy"
        assert legacy.statuses("w-2") == ["online", "offline"]
        assert legacy.statuses("w-4")[-1] == "away"
        # the history is whole: it was written from the stream, not from n3's view
        for user, statuses in [
            ("w-1", ["online", "away", "busy"]),
            ("w-2", ["online", "offline"]),
            ("w-3", ["online"]),
            ("w-4", ["online", "away"]),
        ]:
            rows = wait_rows(engine, user, statuses)
            assert [r["status"] for r in rows] == statuses, (user, rows)


def test_a_node_cut_off_from_redis_past_the_timeout_rejoins_without_doubles(
    tmp_path, redis_server, database_url, engine
):
    """A network partition between one node and Redis, longer than the node timeout,
    while the node keeps serving its clients: the others reap it (its lone users offline,
    node_down); healed, it re-registers, brings back the tabs it still holds and sends the
    change one of them made meanwhile. Every node ends up agreeing, nothing doubled."""
    partition = Partition(redis_server.port)
    group = Cluster(tmp_path, redis_server.url, database_url)
    try:
        group.add_nodes(2)
        group.add_nodes(1, redis_url=partition.url(redis_server.url))
        group.watch()
        alone = group.tab("n3", "cut-alone")
        group.tab("n3", "cut-both")
        group.tab("n1", "cut-both")
        group.tab("n2", "far")
        wait_agree(group, {"cut-alone": "online", "cut-both": "online", "far": "online"})
        others = [w for n in ("n1", "n2") for w in group.watchers_of(n)]

        partition.cut()
        alone.set_status("away")  # n3 serves its clients on: the change waits for Redis
        group.wait_seen(
            "cut-alone", ["online", "offline"], others, timeout=NODE_TIMEOUT + REAP_SLACK
        )
        assert all(w.transition_payloads("cut-alone")[-1]["reason"] == "node_down" for w in others)
        partition.heal()

        now = {"cut-alone": "away", "cut-both": "online", "far": "online"}
        wait_agree(group, now, timeout=30)
        group.fence("n3")
        group.fence("n1")
        assert all(w.connected for w in group.watchers)
        reference = others[0].statuses("cut-alone")
        assert reference[-1] == "away" and not doubled(reference), reference
        for w in group.watchers:
            assert w.present() == now, (w.node.node_id, w.v2, w.present())
            for user in now:
                assert not doubled(w.statuses(user)), (w.node.node_id, user, w.statuses(user))
            assert w.statuses("cut-both") == ["online"] and w.statuses("far") == ["online"]
        for w in others:
            assert w.statuses("cut-alone") == reference
        wait_for(
            lambda: [r["status"] for r in transitions(engine, "cut-alone")] == reference,
            20,
            what=f"the history of cut-alone: {reference}",
        )
        assert no_repeats(transitions(engine)) == []
    finally:
        group.close()
        partition.close()
