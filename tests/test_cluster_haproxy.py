"""The shipped deploy/haproxy.cfg in front of three real cluster nodes.

A real ``haproxy`` runs the shipped file, with only what a test must change rewritten
(listening ports, the nodes' ports, foreground mode and its log on stdout; every
rewrite is counted, so a change to the shipped file that the rewrite no longer
matches fails here instead of testing something else). Behind it, three real
``presence serve --redis`` processes share one real ``redis-server``. In front of it:
Node's ``socket.io-client`` as a browser uses it (long-polling, then the upgrade to
websocket), Node and python-socketio clients on websocket only, and Node clients that
stay on long-polling.

What must hold: every client sees every other's changes whichever node it landed on;
a session's requests (polls, posts, the upgrade) all reach the node that holds the
session, by the route tag its id begins with (HAProxy's own log says which node
answered each request); no node ever answers "Invalid session"; every client stays
connected through its upgrade; new clients spread over the nodes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nodejs import NODE_DIR, node_available
from tests.redis_harness import RedisServer
from tests.server_harness import Client, LoopThread
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "haproxy.cfg"
NODE_IDS = ("n1", "n2", "n3")

pytestmark = [
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="`make test` installs haproxy"),
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_haproxy_accepts_the_shipped_file() -> None:
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(SHIPPED)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """The shipped units, pointed at this checkout's ``presence``, pass systemd's own
    check with no complaint (an unknown key or a bad value is a warning there)."""
    presence = Path(sys.executable).with_name("presence")
    assert presence.exists(), presence
    units = []
    for name, as_name in (("presence@.service", "presence@n1.service"),
                          ("presence-listener.service", "presence-listener.service")):  # fmt: skip
        text = (ROOT / "deploy" / name).read_text()
        assert "/opt/presence/.venv/bin/presence " in text
        (tmp_path / as_name).write_text(
            text.replace("/opt/presence/.venv/bin/presence", str(presence))
        )
        units.append(str(tmp_path / as_name))
    check = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
        check.stdout + check.stderr
    )


# --- the shipped file, with only the test's ports and process settings rewritten ------------


def config_for_test(
    shipped: str, front_port: int, stats_port: int, node_ports: dict[str, int], workdir: Path
) -> str:
    """The shipped configuration with its ports and process settings made test-local.

    Each rewrite must match exactly as often as expected; everything else (timeouts,
    balancing, the sticky ``use-server`` rules, health checks) is the shipped text.
    """
    rewrites: list[tuple[str, object, int]] = [
        (r"^(\s+)bind :80$", rf"\g<1>bind 127.0.0.1:{front_port}", 1),
        (r"^(\s+)bind 127\.0\.0\.1:8404$", rf"\g<1>bind 127.0.0.1:{stats_port}", 1),
        (
            r"^(\s+)server (n\d) 127\.0\.0\.1:410\d$",
            lambda m: f"{m[1]}server {m[2]} 127.0.0.1:{node_ports[m[2]]}",
            len(node_ports),
        ),
        # in the foreground, as the test's user, each request logged on stdout
        (r"^\s+(chroot|user|group|daemon)\b.*\n", "", 4),
        (r"^(\s+)log /dev/log local0\n", r"\g<1>log stdout format raw local0 info\n", 1),
        (r"^\s+log /dev/log local1 notice\n", "", 1),
        (
            r"^(\s+)stats socket /run/haproxy/admin\.sock .*$",
            rf"\g<1>stats socket {workdir}/admin.sock mode 600 level admin",
            1,
        ),
    ]
    text = shipped
    for pattern, replacement, expected in rewrites:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == expected, f"the shipped file changed: {pattern!r} matched {count}×"
    return text


def test_the_rewrite_keeps_the_shipped_routing(tmp_path: Path) -> None:
    shipped = SHIPPED.read_text()
    ports = {n: 5000 + i for i, n in enumerate(NODE_IDS)}
    text = config_for_test(shipped, 6000, 6001, ports, tmp_path)

    def routing(cfg: str) -> list[str]:
        keep = ("balance", "use-server", "option", "http-check", "timeout", "default-server")
        return [line.strip() for line in cfg.splitlines() if line.strip().startswith(keep)]

    assert routing(text) == routing(shipped)
    assert "use-server n1 if { url_param(sid) -m beg n1. }" in routing(text)


# --- processes -------------------------------------------------------------------------------


@dataclass
class Node:
    node_id: str
    port: int
    process: subprocess.Popen
    log: Path

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def node_command(node_id: str, port: int, redis_url: str | None, database: bool) -> list[str]:
    """As deploy/presence@.service runs a node (``database``: PRESENCE_DATABASE_URL is set)."""
    command = [
        sys.executable, "-m", "presence_core", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
        # behind HAProxy every connection comes from HAProxy's address
        "--max-per-address", "0",
    ]  # fmt: skip
    if not database:
        command.append("--no-db")
    return command + (["--redis", redis_url] if redis_url else [])


@contextmanager
def cluster_nodes(
    workdir: Path,
    redis_url: str | None,
    node_ids: tuple[str, ...] = NODE_IDS,
    environment: dict[str, str] | None = None,
) -> Iterator[dict[str, Node]]:
    """``presence serve`` nodes (n1..n3) on free loopback ports, sharing ``redis_url``
    (None: each alone, unless ``environment`` names a Redis as the units do)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update(environment or {})
    nodes: dict[str, Node] = {}
    try:
        for node_id in node_ids:
            env["PRESENCE_HOME"] = str(workdir / f"home-{node_id}")
            port = _free_port()
            log = workdir / f"{node_id}.log"
            with open(log, "w") as out:
                process = subprocess.Popen(
                    node_command(node_id, port, redis_url, "PRESENCE_DATABASE_URL" in env),
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            nodes[node_id] = Node(node_id, port, process, log)
        for node in nodes.values():

            def ready(node: Node = node) -> bool:
                assert node.process.poll() is None, f"{node.node_id}: {node.log.read_text()}"
                return node.health() is not None

            wait_for(ready, 60, interval=0.1, what=f"{node.node_id} answering /health")
        yield nodes
    finally:
        for node in nodes.values():
            _stop(node.process)


@dataclass
class Balancer:
    port: int
    stats_port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_states(self) -> dict[str, str]:
        """Each node's state as HAProxy's stats page says (UP, DOWN, ...)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                rows = csv.DictReader(io.StringIO(answer.read().decode().lstrip("# ")))
                return {r["svname"]: r["status"] for r in rows if r["pxname"] == "presence_nodes"}
        except OSError:
            return {}

    def requests(self) -> list[tuple[str, int, str]]:
        """(node, HTTP status, URL) of every request HAProxy logged for the nodes."""
        line = re.compile(r' presence_nodes/(\S+) \S+ (-?\d+) .*"(?:GET|POST) (\S+) HTTP')
        found = []
        for text in self.log.read_text().splitlines():
            match = line.search(text)
            if match:
                found.append((match[1], int(match[2]), match[3]))
        return found


@contextmanager
def balancer(nodes: dict[str, Node], workdir: Path) -> Iterator[Balancer]:
    config = workdir / "haproxy.cfg"
    front, stats = _free_port(), _free_port()
    ports = {node_id: node.port for node_id, node in nodes.items()}
    config.write_text(config_for_test(SHIPPED.read_text(), front, stats, ports, workdir))
    log = workdir / "haproxy.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    running = Balancer(front, stats, process, log)
    try:

        def all_up() -> bool:
            assert process.poll() is None, log.read_text()
            states = running.server_states()
            return all(states.get(n, "").startswith("UP") for n in nodes)

        # the health checks (GET /health every 2 s, up after 2 successes) find every node
        wait_for(all_up, 30, interval=0.2, what="HAProxy seeing every node UP")
        yield running
    finally:
        # a soft stop (SIGUSR1) lets the last sessions end and be logged
        _stop(process, signal.SIGUSR1, timeout=10)


# --- the clients -----------------------------------------------------------------------------

NODE_CLIENTS = [
    *({"user": f"browser{i}", "transports": "default"} for i in range(4)),
    *({"user": f"poller{i}", "transports": "polling"} for i in range(2)),
    *({"user": f"nodews{i}", "transports": "websocket"} for i in range(3)),
]
PY_USERS = [f"pyws{i}" for i in range(3)]
EVERYONE = [c["user"] for c in NODE_CLIENTS] + PY_USERS


def _play_python(clients: dict[str, Client], everyone_of: dict[str, list[str]]) -> None:
    """The three acts of tests/node/cluster_client.js, for python-socketio clients."""
    for user, client in clients.items():
        client.emit("userOnline", {"userId": user, "userType": "agent", "userName": user})
    for user, client in clients.items():
        wait_for(
            lambda c=client, u=user: (
                set(everyone_of[u]) <= {e["userId"] for e in c.online_list(timeout=30)}
            ),
            60,
            interval=0.2,
            what=f"{user}: everyone online",
        )
    for status, event in (("away", "userStatus"), ("offline", "userOffline")):
        for user, client in clients.items():
            payload = {"userId": user, "status": status} if status == "away" else {"userId": user}
            client.emit(event, payload)
        for user, client in clients.items():
            for other in everyone_of[user]:
                client.wait_change(other, status, timeout=60)


@dataclass
class Observed:
    records: list[dict]  # one per Node client (tests/node/cluster_client.js)
    py_sids: list[str]
    requests: list[tuple[str, int, str]]  # HAProxy's log
    node_logs: dict[str, str]


def through_haproxy(workdir: Path, redis_url: str | None, shared: bool) -> Observed:
    """Every client plays its three acts through HAProxy; ``shared``: each waits for
    everyone's changes (a cluster), else for its own only (nodes that share nothing)."""

    def everyone(user: str) -> list[str]:
        return EVERYONE if shared else [user]

    with cluster_nodes(workdir, redis_url) as nodes, balancer(nodes, workdir) as lb:
        spec = {"clients": [dict(c, everyone=everyone(c["user"])) for c in NODE_CLIENTS]}
        node_clients = subprocess.Popen(
            ["node", str(NODE_DIR / "cluster_client.js"), lb.url, json.dumps(spec), "60000"],
            cwd=NODE_DIR,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        loop = LoopThread()
        clients: dict[str, Client] = {}
        try:
            for user in PY_USERS:
                clients[user] = Client(loop, lb.url)  # websocket only
                clients[user].connect()
            py_sids = [c.sio.eio.sid for c in clients.values()]
            _play_python(clients, {user: everyone(user) for user in PY_USERS})
            out, err = node_clients.communicate(timeout=120)
        finally:
            for client in clients.values():
                client.close()
            loop.close()
            with contextlib.suppress(ProcessLookupError):
                node_clients.kill()
        assert node_clients.returncode == 0, f"{err}\n{out}"
    return Observed(
        records=json.loads(out),
        py_sids=py_sids,
        requests=lb.requests(),
        node_logs={n: node.log.read_text() for n, node in nodes.items()},
    )


def assert_sticky_and_spread(seen: Observed) -> None:
    """Every client stayed connected through its upgrade; every request of a session
    reached the node holding it (HAProxy's log), none was refused; new clients spread."""
    assert {r["user"] for r in seen.records} == {c["user"] for c in NODE_CLIENTS}
    for r in seen.records:
        assert r["disconnects"] == [] and r["errors"] == [] and r["connectedAtEnd"], r
        expected = {"default": ("polling", ["websocket"], "websocket"),
                    "polling": ("polling", [], "polling"),
                    "websocket": ("websocket", [], "websocket")}[r["transports"]]  # fmt: skip
        assert (r["firstTransport"], r["upgrades"], r["lastTransport"]) == expected, r

    # each session id carries its node's route tag; new clients spread over the nodes
    sids = [r["sid"] for r in seen.records] + seen.py_sids
    assert all(re.fullmatch(r"n[123]\.[A-Za-z0-9_-]+", sid) for sid in sids), sids
    assert {sid.split(".")[0] for sid in sids} == set(NODE_IDS), sids

    with_sid = [(node, status, url) for node, status, url in seen.requests if "sid=" in url]
    polls = [x for x in with_sid if "transport=polling" in x[2]]
    upgrades = [x for x in with_sid if "transport=websocket" in x[2]]
    # six clients poll: each at least its connect (POST) and a GET after the handshake
    assert len(polls) >= 6 * 2 and len(upgrades) == 4, (len(polls), len(upgrades))
    for node, _, url in with_sid:
        sid = re.search(r"[?&]sid=([^&]+)", url)[1]
        assert sid.startswith(f"{node}."), f"{url} went to {node}"
    assert all(status != 400 for _, status, _ in seen.requests), seen.requests
    for node_id, text in seen.node_logs.items():
        assert "Invalid session" not in text, f"{node_id}:\n{text}"


@pytest.mark.slow
@pytest.mark.skipif(not node_available(), reason="run `npm ci` in tests/node")
def test_clients_through_haproxy_see_each_other_across_nodes(tmp_path: Path) -> None:
    """Three nodes sharing a Redis that wants a password: every client hears every
    other's changes exactly once, whichever node each landed on; a request that
    reached the wrong node would be refused (Engine.IO sessions live in one process,
    cluster or not), so stickiness is proven on the way."""
    redis = RedisServer(tmp_path / "redis", password="s3cret-for-the-cluster").start()
    try:
        seen = through_haproxy(tmp_path, redis.url, shared=True)
    finally:
        redis.stop()
    assert_sticky_and_spread(seen)
    for r in seen.records:
        for user in EVERYONE:
            for status in ("away", "offline"):
                assert r["changes"].count([user, status]) == 1, (r["user"], user, status)
    # the Node clients heard users of every node, their own and the two others
    node_of = {r["user"]: r["sid"].split(".")[0] for r in seen.records}
    for r in seen.records:
        heard_from = {node_of[user] for user, _ in r["changes"] if user in node_of}
        assert heard_from == set(NODE_IDS), r


@pytest.mark.slow
def test_a_frozen_node_is_taken_out_and_its_clients_cut_loose(tmp_path: Path) -> None:
    """SIGSTOP one node: its /health stops answering, HAProxy marks it DOWN and cuts
    its sessions (their clients reconnect elsewhere long before Engine.IO's own ping
    timeout of 45 s would notice), new clients go to the other nodes; SIGCONT brings
    it back UP."""
    with cluster_nodes(tmp_path, None) as nodes, balancer(nodes, tmp_path) as lb:
        loop = LoopThread()
        clients: list[Client] = []
        frozen = nodes["n3"]
        try:
            # leastconn: three websocket clients in a row land on three different nodes
            for _ in NODE_IDS:
                clients.append(Client(loop, lb.url))
                clients[-1].connect()
            by_node = {c.sio.eio.sid.split(".")[0]: c for c in clients}
            assert set(by_node) == set(NODE_IDS), [c.sio.eio.sid for c in clients]

            frozen.process.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            wait_for(
                lambda: lb.server_states().get("n3", "").startswith("DOWN"),
                30,
                interval=0.2,
                what="HAProxy marking the frozen node DOWN",
            )
            wait_for(lambda: not by_node["n3"].sio.connected, 15, what="its client cut loose")
            assert time.monotonic() - stopped_at < 25, "cut by the ping timeout, not HAProxy"
            assert by_node["n1"].sio.connected and by_node["n2"].sio.connected

            newcomers = [Client(loop, lb.url) for _ in range(4)]
            for client in newcomers:
                client.connect()
                clients.append(client)
            assert {c.sio.eio.sid.split(".")[0] for c in newcomers} == {"n1", "n2"}
        finally:
            frozen.process.send_signal(signal.SIGCONT)
            for client in clients:
                client.close()
            loop.close()
        wait_for(
            lambda: lb.server_states().get("n3", "").startswith("UP"),
            30,
            interval=0.2,
            what="the thawed node UP again",
        )


# --- Redis over TLS, as an ACL user, the way docs and the environment example say ------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "1", "-subj", "/CN=presence test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key",
            "-out", "redis.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "redis.pem", "-days", "1", "-extfile", "san")  # fmt: skip
    return directory / "ca.pem", directory / "redis.pem", directory / "redis.key"


def _documented(path: Path, pattern: str) -> str:
    """The one line of ``path`` that matches ``pattern`` (what the docs tell operators)."""
    found = [m[1] for m in re.finditer(pattern, path.read_text(), flags=re.M)]
    assert len(found) == 1, f"{path.name}: {pattern!r} found {len(found)}×"
    return found[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_nodes_reach_redis_over_tls_as_the_documented_acl_user(
    tmp_path: Path, database_url, engine
) -> None:
    """Redis with TLS only and the ACL user docs/operations.md gives (the default user
    off); two nodes get the URL as the units do, from PRESENCE_REDIS_URL in the form of
    deploy/presence.env.example's TLS line, with a password that must be percent-encoded.
    A change on one node reaches the other's client, and the nodes record each
    transition once through the writers' group: every command they need is allowed."""
    from urllib.parse import quote

    from sqlalchemy import text

    password = "p@ss:w/rd#1"
    ca, cert, key = _certificates(tmp_path / "tls")
    acl = _documented(ROOT / "docs" / "operations.md", r"`(user presence on >PASSWORD [^`]+)`")
    example = _documented(
        ROOT / "deploy" / "presence.env.example", r"^#PRESENCE_REDIS_URL=(rediss://\S+)$"
    )
    port = _free_port()
    url = example
    for old, new in (("CHANGE-ME-redis-password", quote(password, safe="")),
                     ("redis.internal:6380", f"127.0.0.1:{port}"),
                     ("/etc/presence/redis-ca.pem", str(ca))):  # fmt: skip
        assert url.count(old) == 1, (old, url)
        url = url.replace(old, new)
    redis_log = tmp_path / "redis.log"
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--logfile", str(redis_log),
         "--user", "default", "off",
         "--user", *acl.replace("PASSWORD", password).split()[1:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    environment = {
        "PRESENCE_REDIS_URL": url,
        "PRESENCE_DATABASE_URL": database_url.render_as_string(hide_password=False),
    }
    loop = LoopThread()
    try:
        with cluster_nodes(tmp_path, None, ("n1", "n2"), environment) as nodes:

            def clustered() -> bool:
                healths = [n.health() or {} for n in nodes.values()]
                return all(
                    h.get("cluster", {}).get("redis") and h["cluster"].get("nodes_alive") == 2
                    for h in healths
                )

            wait_for(clustered, 30, interval=0.2, what="both nodes in the cluster over TLS")
            alice = Client(loop, f"http://127.0.0.1:{nodes['n1'].port}")
            watcher = Client(loop, f"http://127.0.0.1:{nodes['n2'].port}")
            try:
                watcher.connect()
                alice.connect()
                alice.emit("userOnline", {"userId": "tls-1", "userType": "agent"})
                watcher.wait_change("tls-1", "online", timeout=20)
                alice.emit("userOffline", {"userId": "tls-1"})
                watcher.wait_change("tls-1", "offline", timeout=20)
            finally:
                alice.close()
                watcher.close()

            def recorded() -> list:
                with engine.connect() as conn:
                    return conn.execute(
                        text(
                            "select status from presence_transitions "
                            "where user_id = 'tls-1' order by occurred_at"
                        )
                    ).all()

            wait_for(lambda: len(recorded()) == 2, 30, what="both transitions recorded")
            assert [r.status for r in recorded()] == ["online", "offline"]
            logs = "".join(n.log.read_text() for n in nodes.values())
    finally:
        loop.close()
        _stop(redis)
    assert "NOPERM" not in logs and "NOPERM" not in redis_log.read_text(), logs


# --- the listener of deploy/presence-listener.service: through HAProxy ----------------------
@pytest.mark.slow
def test_a_listener_through_haproxy_moves_on_when_its_node_dies(
    redis_server: RedisServer, tmp_path: Path, database_url, engine
) -> None:
    """``presence listen --server <HAProxy>`` (as deploy/presence-listener.service runs
    it, nodes without a database): it records users of other nodes; SIGKILL its node and
    it reconnects through HAProxy to a live one and goes on recording, nothing doubled."""
    from sqlalchemy import text

    def rows() -> list[tuple[str, bool]]:
        with engine.connect() as conn:
            return [
                (r.status, r.inferred)
                for r in conn.execute(
                    text(
                        "select status, inferred from presence_transitions "
                        "where user_id = 'alice' order by occurred_at"
                    )
                )
            ]

    def coverage_opened() -> int:
        with engine.connect() as conn:
            return conn.execute(
                text("select count(*) from presence_coverage where listener = 'via-haproxy'")
            ).scalar_one()

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_DATABASE_URL"] = database_url.render_as_string(hide_password=False)
    env["PRESENCE_HOME"] = str(tmp_path / "listener-home")
    loop = LoopThread()
    with cluster_nodes(tmp_path, redis_server.url) as nodes, balancer(nodes, tmp_path) as lb:
        log = tmp_path / "listener.log"
        with open(log, "w") as out:
            listener = subprocess.Popen(
                [sys.executable, "-m", "presence_core", "listen", "--server", lb.url,
                 "--name", "via-haproxy", "--writer", "thread"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(lambda: coverage_opened() == 1, 60, interval=0.2, what="listener on")
            # the listener is the only client yet: its node is the one holding a connection
            held = {n: (node.health() or {}).get("connections") for n, node in nodes.items()}
            (home,) = [n for n, count in held.items() if count == 1]
            other = next(n for n in NODE_IDS if n != home)
            alice = Client(loop, f"http://127.0.0.1:{nodes[other].port}")
            alice.connect()
            alice.emit("userOnline", {"userId": "alice", "userType": "agent"})
            wait_for(lambda: rows() == [("online", False)], 30, what="alice online recorded")

            nodes[home].process.kill()
            nodes[home].process.wait(10)
            wait_for(lambda: coverage_opened() == 2, 60, interval=0.2, what="listener back")
            after = {n: (nodes[n].health() or {}).get("connections") for n in nodes if n != home}
            assert sum(after.values()) == 2, after  # alice and the listener, on live nodes

            alice.emit("userStatus", {"userId": "alice", "status": "away"})
            wait_for(lambda: len(rows()) >= 2, 30, what="alice away recorded")
        finally:
            _stop(listener)  # before alice leaves: her offline is not part of this test
            loop.close()
    assert rows() == [("online", False), ("away", False)], log.read_text()
