"""A presence cluster of real processes for tests: N ``presence serve --redis`` nodes
on loopback, real Socket.IO clients on them, and the signals a test needs.

Black-box: the nodes are driven only through the command line, the guide's protocol,
protocol version 2 and ``GET /health``. Every node runs in a process group of its own,
so SIGKILL, SIGSTOP and SIGCONT reach it whole, and :meth:`Cluster.close` stops every
process the cluster started (thawing frozen ones first), even when a test fails.

Durations are short (``--node-timeout`` 3 s, ``--grace`` 1 s) to keep the tests fast;
tests wait on conditions (:mod:`tests.waiting`), never on the clock alone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from tests.server_harness import Client, LoopThread
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
NODE_TIMEOUT = 3.0
GRACE = 1.0
# slack on top of a node timeout before a reap must have been seen everywhere: the reap
# runs every second, then the stream reader and the diff interval (0.2 s) deliver it;
# generous because the machine is loaded
REAP_SLACK = 6.0

_fence_ids = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ClusterNode:
    """One ``presence serve --redis`` process; ``url`` is where clients connect."""

    def __init__(
        self,
        node_id: str,
        redis_url: str,
        workdir: Path,
        database_url: str | None = None,
        node_timeout: float = NODE_TIMEOUT,
        grace: float = GRACE,
        extra: Iterable[str] = (),
    ) -> None:
        self.node_id = node_id
        self.redis_url = redis_url
        self.database_url = database_url
        self.node_timeout, self.grace = node_timeout, grace
        self.extra = list(extra)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{node_id}.log"
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.frozen = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "presence_core", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--redis", self.redis_url, "--node-id", self.node_id]
        args += ["--node-timeout", str(self.node_timeout), "--grace", str(self.grace)]
        if self.database_url is None:
            args.append("--no-db")
        else:
            args += ["--database-url", self.database_url]
        return args + self.extra

    def launch(self) -> None:
        """Start the process (on a new free port unless it had one); do not wait."""
        assert not self.alive, f"{self.node_id} is already running"
        if not self.port:
            self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
        env["PRESENCE_HOME"] = str(self.workdir / "home")
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach all of it
            )
        self.frozen = False

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until ``/health`` answers; a process that exits first fails with its log.

        The port was free when chosen, but another program may take it before the node
        binds it (the machine is shared): then the node starts again on a new port."""
        for _attempt in range(3):
            lost_port = False

            def ready() -> bool:
                nonlocal lost_port
                if not self.alive:
                    if "Address already in use" in self.log_tail(3):
                        lost_port = True
                        return True
                    raise AssertionError(f"node {self.node_id} exited:\n{self.log_tail()}")
                return self.health() is not None

            wait_for(ready, timeout, interval=0.05, what=f"node {self.node_id} answering /health")
            if not lost_port:
                return
            self.port = 0
            self.launch()
        raise AssertionError(f"node {self.node_id} found no free port:\n{self.log_tail()}")

    def start(self, timeout: float = 60) -> ClusterNode:
        self.launch()
        self.wait_ready(timeout)
        return self

    def health(self) -> dict | None:
        """``GET /health`` as a dict, or None when it does not answer within a second."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def cluster_health(self) -> dict | None:
        """The ``cluster`` object of ``/health`` (docs: what a node says of the cluster)."""
        health = self.health()
        return None if health is None else health.get("cluster")

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> float:
        """SIGKILL the node (no goodbye of any kind); returns the wall time it was sent."""
        at = time.time()
        self._signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        self.frozen = False
        return at

    def freeze(self) -> float:
        """SIGSTOP: the process stays, its sockets stay open, nothing runs."""
        at = time.time()
        self._signal(signal.SIGSTOP)
        self.frozen = True
        return at

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop the process whatever state it is in (thawed first, SIGKILL if slow)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.frozen:
                self.thaw()
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        # whatever the node left in its group (nothing, normally)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.frozen = False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Partition:
    """A TCP relay on loopback between some nodes and Redis that a test can cut: while
    cut, bytes wait in the relay both ways (the nodes behind it see Redis stop
    answering, as in a network partition, while the rest of the cluster goes on);
    healed, they flow again. A fault injector, not a stand-in: Redis is the real one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, redis_url: str) -> str:
        return redis_url.replace(f":{self.target_port}/", f":{self.port}/")

    def _accept(self) -> None:
        while not self.closed:
            try:
                near, _ = self.server.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        with contextlib.suppress(OSError):
            self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


class ClusterClient(Client):
    """A python-socketio client of one node (legacy, or version 2 with ``v2``)."""

    def __init__(self, loop: LoopThread, node: ClusterNode, v2: bool = False, **kwargs: Any):
        auth = kwargs.pop("auth", None)
        if v2:
            auth = {**(auth or {}), "protocol": 2}
        super().__init__(loop, node.url, auth=auth, **kwargs)
        self.node = node
        self.v2 = v2
        self.user_id: Any = None
        self.subscribed_seq: int | None = None
        self.snapshot: list[dict] = []

    def announce(self, user_id: Any, name: str | None = None, **extra: Any) -> dict:
        """``userOnline`` for ``user_id``, acknowledged (the node has handled it)."""
        payload = {"userId": user_id, "userName": name or f"User {user_id}", "userType": "agent"}
        ack = self.call("userOnline", {**payload, **extra})
        assert ack == {"ok": True}, f"userOnline {user_id} on {self.node.node_id}: {ack}"
        self.user_id = user_id
        return ack

    def set_status(self, status: str) -> dict:
        ack = self.call("userStatus", {"userId": self.user_id, "status": status})
        assert ack == {"ok": True}, f"userStatus {status} for {self.user_id}: {ack}"
        return ack

    def leave(self) -> dict:
        """``userOffline`` (the tab says goodbye: no grace period), acknowledged."""
        ack = self.call("userOffline", {"userId": self.user_id})
        assert ack == {"ok": True}, f"userOffline {self.user_id}: {ack}"
        return ack

    def subscribe_all(self) -> dict:
        ack = self.call("subscribe", {"all": True})
        assert ack.get("ok") is True, f"subscribe on {self.node.node_id}: {ack}"
        self.subscribed_seq, self.snapshot = ack["seq"], ack["users"]
        return ack

    @property
    def connected(self) -> bool:
        return self.sio.connected

    # what the client has seen -------------------------------------------------------

    def transitions(self, user_id: Any = None) -> list[tuple[Any, str]]:
        """Every transition received, in order: ``userStatusChanged`` for a legacy
        client, the changes of every ``presenceDiff`` for a version-2 one."""
        return self.diff_changes(user_id) if self.v2 else self.changes(user_id)

    def transition_payloads(self, user_id: Any = None) -> list[dict]:
        if self.v2:
            found = [c for d in self.diffs() for c in d["changes"]]
        else:
            found = list(self.received("userStatusChanged"))
        return [p for p in found if user_id is None or p["userId"] == user_id]

    def statuses(self, user_id: Any) -> list[str]:
        return [status for _, status in self.transitions(user_id)]

    def seqs(self) -> list[int]:
        return [d["seq"] for d in self.diffs()]

    def seq_jumps(self) -> int:
        """How many times a diff's ``seq`` was not the previous one's plus one
        (counting from the subscription's acknowledgement)."""
        jumps, last = 0, self.subscribed_seq
        for seq in self.seqs():
            if last is not None and seq <= last:
                continue  # sent before the snapshot
            if last is not None and seq != last + 1:
                jumps += 1
            last = seq
        return jumps

    def present(self) -> dict[str, str]:
        """Who this client believes is present (user id as text → status), from what it
        received: the v2 snapshot then its diffs; for legacy, every change since connect."""
        state: dict[str, str] = {}
        if self.v2:
            for user in self.snapshot:
                if user["status"] != "offline":
                    state[str(user["userId"])] = user["status"]
            payloads = [
                c
                for d in self.diffs()
                if self.subscribed_seq is None or d["seq"] > self.subscribed_seq
                for c in d["changes"]
            ]
        else:
            payloads = list(self.received("userStatusChanged"))
        for change in payloads:
            if change["status"] == "offline":
                state.pop(str(change["userId"]), None)
            else:
                state[str(change["userId"])] = change["status"]
        return state

    def online_users(self, timeout: float = 15) -> dict[str, str]:
        """``getOnlineUsers`` now, as user id (text) → status."""
        return {str(u["userId"]): u["status"] for u in self.online_list(timeout)}


class Cluster:
    """Nodes ``n1``…``nN`` on one Redis (and optionally one database), clients on them."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        database_url: Any = None,
        node_timeout: float = NODE_TIMEOUT,
        grace: float = GRACE,
        extra: Iterable[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.redis_url = redis_url
        if database_url is not None and not isinstance(database_url, str):
            database_url = database_url.render_as_string(hide_password=False)
        self.database_url = database_url
        self.node_timeout, self.grace, self.extra = node_timeout, grace, list(extra)
        self.nodes: dict[str, ClusterNode] = {}
        self.clients: list[ClusterClient] = []
        self.watchers: list[ClusterClient] = []
        self.loop = LoopThread()

    # nodes --------------------------------------------------------------------------

    def add_nodes(self, count: int, redis_url: str | None = None) -> list[ClusterNode]:
        """Start ``count`` more nodes at once and wait until every one answers
        (``redis_url``: another way to the same Redis, e.g. a :class:`Partition`)."""
        added = []
        for _ in range(count):
            node_id = f"n{len(self.nodes) + 1}"
            node = ClusterNode(
                node_id,
                redis_url or self.redis_url,
                self.workdir / node_id,
                self.database_url,
                self.node_timeout,
                self.grace,
                self.extra,
            )
            self.nodes[node_id] = node
            added.append(node)
        for node in added:
            node.launch()
        for node in added:
            node.wait_ready()
        return added

    def __getitem__(self, node_id: str) -> ClusterNode:
        return self.nodes[node_id]

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.alive and not n.frozen]

    def logs(self) -> str:
        return "\n".join(f"=== {n.node_id}\n{n.log_tail()}" for n in self.nodes.values())

    # clients ------------------------------------------------------------------------

    def client(self, node: ClusterNode | str, v2: bool = False, **kwargs: Any) -> ClusterClient:
        """A client connected to ``node`` (not yet speaking for anyone)."""
        if isinstance(node, str):
            node = self.nodes[node]
        client = ClusterClient(self.loop, node, v2=v2, **kwargs)
        client.connect()
        self.clients.append(client)
        return client

    def tab(
        self, node: ClusterNode | str, user_id: Any, v2: bool = False, **extra: Any
    ) -> ClusterClient:
        """A user's tab on ``node``: connected and announced."""
        client = self.client(node, v2=v2)
        client.announce(user_id, **extra)
        return client

    def watch(self, nodes: Iterable[ClusterNode | str] | None = None) -> list[ClusterClient]:
        """On each node (default all), a legacy watcher and a version-2 watcher
        subscribed to everything; they announce nobody."""
        added = []
        for node in nodes if nodes is not None else list(self.nodes.values()):
            legacy = self.client(node)
            v2 = self.client(node, v2=True)
            v2.subscribe_all()
            added += [legacy, v2]
        self.watchers += added
        return added

    def watchers_of(self, node: ClusterNode | str) -> list[ClusterClient]:
        node_id = node if isinstance(node, str) else node.node_id
        return [w for w in self.watchers if w.node.node_id == node_id]

    def live_watchers(self) -> list[ClusterClient]:
        return [w for w in self.watchers if w.node.alive and not w.node.frozen and w.connected]

    def wait_seen(
        self,
        user_id: Any,
        statuses: list[str],
        watchers: Iterable[ClusterClient] | None = None,
        timeout: float = 20,
    ) -> None:
        """Wait until every watcher (default: every live one) has received at least
        ``statuses`` for ``user_id``, then check that they received exactly that."""
        group = list(watchers) if watchers is not None else self.live_watchers()

        def seen() -> bool:
            return all(len(w.statuses(user_id)) >= len(statuses) for w in group)

        try:
            wait_for(seen, timeout, what=f"{user_id} {statuses} on every watcher")
        except AssertionError as error:
            got = {f"{w.node.node_id}/{'v2' if w.v2 else 'v1'}": w.statuses(user_id) for w in group}
            raise AssertionError(f"{error}: {got}\n{self.logs()}") from None
        for w in group:
            assert w.statuses(user_id) == statuses, (
                f"{w.node.node_id} {'v2' if w.v2 else 'legacy'} watcher saw "
                f"{w.statuses(user_id)} for {user_id}, expected {statuses}"
            )

    def fence(
        self, node: ClusterNode | str | None = None, timeout: float = 20, jumps: bool = False
    ) -> str:
        """A marker transition made now on ``node`` (default: the first live one) and
        waited for on every live watcher.

        The stream gives every node the cluster's transitions in one order, so once the
        fence's online and offline have arrived everywhere, every transition decided
        before it has too: checks of "exactly once" made after a fence are not luck.
        Unless ``jumps``, no version-2 watcher may have seen a ``seq`` jump (a node that
        re-snapshots when it had no need makes every client subscribe again)."""
        node = node or self.live_nodes()[0]
        user = f"fence-{next(_fence_ids)}"
        tab = self.tab(node, user)
        tab.leave()
        self.wait_seen(user, ["online", "offline"], timeout=timeout)
        tab.close()
        if not jumps:
            jumped = {w.node.node_id: w.seqs() for w in self.live_watchers() if w.seq_jumps()}
            assert not jumped, f"seq jumps on version-2 watchers: {jumped}"
        return user

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes.values():
            node.stop()
        self.loop.close()


def is_fence(user_id: Any) -> bool:
    return str(user_id).startswith("fence-")


@contextmanager
def cluster(
    workdir: Path, redis_url: str, nodes: int = 2, database_url: Any = None, **kwargs: Any
) -> Iterator[Cluster]:
    """``nodes`` nodes started and answering; everything stopped afterwards."""
    group = Cluster(workdir, redis_url, database_url, **kwargs)
    try:
        group.add_nodes(nodes)
        yield group
    finally:
        group.close()


# the database -----------------------------------------------------------------------


def transitions(engine: Engine, user_id: Any = None) -> list[dict]:
    """Rows of ``presence_transitions`` (one user's, or all but fences), in time order."""
    query = (
        "select user_id, status, occurred_at, reason, inferred, source "
        "from presence_transitions {where} order by user_id, occurred_at, id"
    )
    with engine.connect() as conn:
        if user_id is None:
            rows = conn.execute(text(query.format(where="where user_id not like 'fence-%'")))
        else:
            rows = conn.execute(text(query.format(where="where user_id = :u")), {"u": str(user_id)})
        return [dict(r._mapping) for r in rows]


def statuses_in_database(engine: Engine, user_id: Any) -> list[str]:
    return [row["status"] for row in transitions(engine, user_id)]


def final_statuses(engine: Engine) -> dict[str, str]:
    """Each user's last recorded status (fences left out)."""
    last: dict[str, str] = {}
    for row in transitions(engine):
        last[row["user_id"]] = row["status"]
    return last


def no_repeats(rows: list[dict]) -> list[tuple[str, str]]:
    """Pairs of consecutive rows of one user with the same status (a doubled transition)."""
    doubled = []
    for before, after in itertools.pairwise(rows):
        if before["user_id"] == after["user_id"] and before["status"] == after["status"]:
            doubled.append((after["user_id"], after["status"]))
    return doubled


def doubled(statuses: list[str]) -> bool:
    """Whether one status follows itself (a transition told twice)."""
    return any(a == b for a, b in itertools.pairwise(statuses))


def wait_rows(engine: Engine, user_id: Any, statuses: list[str], timeout: float = 20) -> list[dict]:
    """Wait until the database holds at least ``statuses`` for the user; return its rows."""
    wait_for(
        lambda: len(transitions(engine, user_id)) >= len(statuses),
        timeout,
        what=f"{len(statuses)} rows for {user_id} in presence_transitions",
    )
    return transitions(engine, user_id)


def as_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
