"""Randomised interleavings across a 3-node cluster against a simple model (issue 14).

The model: a user is present while some tab of theirs is connected to a live node;
their status is the last one any tab set since they came; every change of that is
one transition. Each seed plays connects (guide and version-2 clients), goodbyes,
closes without goodbye, status changes and one node death (SIGKILL, perhaps
followed by a fresh process with the same node id, or SIGSTOP past the timeout and
SIGCONT) in a random order, then checks
that every live node's ``getOnlineUsers``, what every watcher received and the
database all agree with the model, transition for transition.

Real processes are slow, so the seeds are few and fixed: the suite stays
deterministic in what it plays (the machine decides only how fast).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tests.cluster_harness import (
    NODE_TIMEOUT,
    REAP_SLACK,
    Cluster,
    ClusterClient,
    cluster,
    doubled,
    is_fence,
    no_repeats,
    transitions,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

# what each plays (among other steps): 3 kills a node and restarts it under its name,
# 7 kills one for good, 22 freezes one past the timeout; each takes lone users offline
SEEDS = [3, 7, 22]
STEPS = 24
GRACE = 1.0
STATUSES = ["online", "away", "busy"]


@dataclass
class Tab:
    user: str
    node: str
    client: ClusterClient
    open: bool = True


@dataclass
class Model:
    """Who is present and with which status, and every transition each user made."""

    tabs: list[Tab] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)

    def open_tabs(self, user: str | None = None) -> list[Tab]:
        return [t for t in self.tabs if t.open and (user is None or t.user == user)]

    def came(self, tab: Tab) -> None:
        self.tabs.append(tab)
        if tab.user not in self.status:
            self.status[tab.user] = "online"
            self.history.setdefault(tab.user, []).append("online")

    def went(self, tab: Tab) -> bool:
        """The tab stopped counting; True when that took its user offline."""
        tab.open = False
        if not self.open_tabs(tab.user):
            del self.status[tab.user]
            self.history[tab.user].append("offline")
            return True
        return False

    def set(self, user: str, status: str) -> None:
        if self.status[user] != status:
            self.status[user] = status
            self.history[user].append(status)


def agree(group: Cluster, model: Model, what: str, timeout: float = 20) -> None:
    """Wait until every live node's ``getOnlineUsers`` is the model's present users."""
    seen: dict[str, dict[str, str]] = {}

    def check() -> bool:
        for node in group.live_nodes():
            asker = next(w for w in group.watchers_of(node) if not w.v2 and w.connected)
            seen[node.node_id] = {u: s for u, s in asker.online_users().items() if not is_fence(u)}
        return all(answer == model.status for answer in seen.values())

    try:
        wait_for(check, timeout, interval=0.2, what=f"nodes agreeing with the model ({what})")
    except AssertionError as error:
        raise AssertionError(
            f"{error}: model {model.status}, nodes {seen}\n{group.logs()}"
        ) from None


def play(group: Cluster, rng: random.Random, seed: int) -> tuple[Model, set[str]]:
    """Play one seed's scenario; returns the model and the nodes that never died."""
    model = Model()
    users = [f"s{seed}-u{i}" for i in range(6)]
    death_step = rng.randrange(STEPS // 3, STEPS - 4)
    never_died = set(group.nodes)
    for step in range(STEPS):
        if step == death_step:
            victim = rng.choice(sorted(group.nodes))
            kind = rng.choice(["kill", "kill and restart", "freeze"])
            node = group[victim]
            held = [t for t in model.open_tabs() if t.node == victim]
            before = dict(model.status)
            if kind == "freeze":
                node.freeze()  # past the timeout: reaped like a dead node
            else:
                node.kill()
                never_died.discard(victim)
            for tab in held:
                model.went(tab)
            agree(group, model, f"after {victim} went ({kind})", NODE_TIMEOUT + REAP_SLACK + 10)
            if kind == "freeze":
                node.thaw()
                # it re-joins the tabs it still holds: their users come back, with the
                # status they had (docs/cluster.md, "A node dies or freezes")
                for tab in held:
                    tab.open = True
                    if tab.user not in model.status:
                        model.status[tab.user] = "online"
                        model.history[tab.user].append("online")
                        model.set(tab.user, before[tab.user])
                agree(group, model, f"after {victim} woke", 30)
            elif kind == "kill and restart":  # a fresh process under the same name
                node.start()
                group.watch([node])
            continue
        live = sorted(n.node_id for n in group.live_nodes())
        open_tabs = model.open_tabs()
        action = rng.choices(["connect", "status", "leave", "close"], [4, 3, 2, 2])[0]
        if action == "connect" or not open_tabs:
            user, node = rng.choice(users), rng.choice(live)
            client = group.tab(node, user, v2=rng.random() < 0.5)
            model.came(Tab(user, node, client))
        elif action == "status":
            tab = rng.choice(open_tabs)
            status = rng.choice(STATUSES)
            tab.client.set_status(status)
            model.set(tab.user, status)
        else:
            tab = rng.choice(open_tabs)
            # a tab closed without a goodbye counts for the grace period: done only to a
            # user's last tab (and waited out), so that the model's order is the cluster's
            # (a grace running beside other steps of the same user is test_cluster's)
            if action == "leave" or len(model.open_tabs(tab.user)) > 1:
                tab.client.leave()
                model.went(tab)
                continue
            tab.client.close()
            if model.went(tab):
                group.wait_seen(
                    tab.user,
                    list(model.history[tab.user]),
                    [w for w in group.live_watchers() if w.node.node_id in never_died],
                    timeout=GRACE + 20,
                )
    return model, never_died


@pytest.mark.parametrize("seed", SEEDS)
def test_random_interleavings_agree_with_the_model(
    tmp_path, redis_server, database_url, engine, seed
):
    rng = random.Random(seed)
    with cluster(tmp_path, redis_server.url, 3, database_url, grace=GRACE) as group:
        group.watch()
        first_watchers = list(group.watchers)
        model, never_died = play(group, rng, seed)

        agree(group, model, "at the end", GRACE + 20)
        for node in group.live_nodes():
            group.fence(node)

        # every watcher that lived through it all received exactly the model's transitions
        steady = [w for w in first_watchers if w.node.node_id in never_died]
        assert steady, "a node survives every scenario"
        for user, history in model.history.items():
            group.wait_seen(user, history, steady)
        # watchers of a restarted node: their version-2 snapshot and diffs add up
        for w in group.live_watchers():
            if w.v2:
                if w.seq_jumps():
                    w.subscribe_all()
                assert w.present() == model.status, (w.node.node_id, w.present())
            for user in model.history:
                statuses = w.statuses(user)
                assert not doubled(statuses), (user, statuses)

        # the database: every transition once, in order, ending where the model ends
        def recorded() -> dict[str, list[str]]:
            rows: dict[str, list[str]] = {}
            for row in transitions(engine):
                rows.setdefault(row["user_id"], []).append(row["status"])
            return rows

        wait_for(lambda: recorded() == model.history, 20, interval=0.2, what="the database")
        assert no_repeats(transitions(engine)) == []
