"""The presence cluster: 1, 2 and 4 nodes sharing Redis, beside one process alone.

    python -m bench.bench_cluster                       # storms of 200, 400, 800; v2 2,000
    python -m bench.bench_cluster --nodes 1,2 --storm 400 --v2-users 500 --no-record

Every configuration runs on fresh processes: a real ``redis-server`` (empty) and N
``presence serve --no-db --redis URL --node-id nK`` nodes; the baseline is one
``presence serve --no-db`` without Redis, as a single process works today.

1. The guide's login storm (bench/bench_server.py's ``_storm``): N users connect within
   ``--spread`` seconds and announce themselves; every announcement reaches every
   client (N²/2 deliveries), in a cluster through the Redis stream to every node.
2. The 2,000-user shift start with protocol version 2 (bench/bench_server_v2.py's
   ``_crowd``): each user subscribes to its team, then announces itself.

The clients are the same raw Engine.IO clients as there, spread over the nodes in
turn (as HAProxy's leastconn spreads them; HAProxy itself is left out so that its CPU
is not counted as the cluster's). Measured besides their figures: the connections
each node held at the peak (its ``/health``), the CPU of the nodes and of Redis, and
the Redis commands per transition (``INFO commandstats`` before and after, the
nodes' idle background of liveness, reaping and blocked stream reads subtracted;
transitions counted on the stream ``presence:events``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import redis

import bench.bench_server as storm_bench
import bench.bench_server_v2 as v2_bench
from bench.bench_server import Server, StormResult
from bench.bench_server_v2 import CrowdRun
from bench.report import record, table
from tests.redis_harness import RedisServer

ROOT = Path(__file__).resolve().parent.parent
EVENTS = "presence:events"  # the cluster's stream of transitions (docs/cluster.md)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the processes ---------------------------------------------------------------------------


@dataclass
class Deployment:
    """N nodes (and the Redis they share, unless ``redis`` is None)."""

    name: str
    nodes: list[Server]
    redis: RedisServer | None
    peak_connections: dict[str, int] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def processes(self) -> list[psutil.Process]:
        found = [psutil.Process(n.process.pid) for n in self.nodes]
        if self.redis is not None and self.redis.process is not None:
            found.append(psutil.Process(self.redis.process.pid))
        return found

    def redis_client(self) -> redis.Redis | None:
        if self.redis is None:
            return None
        return redis.Redis.from_url(self.redis.url, decode_responses=True)


def _health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None


@contextmanager
def deployment(nodes: int, clustered: bool, workdir: Path) -> Iterator[Deployment]:
    """``nodes`` fresh node processes; ``clustered``: sharing a fresh, empty Redis."""
    server = RedisServer(workdir / f"redis-{nodes}") if clustered else None
    started: list[Server] = []
    try:
        if server is not None:
            server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
        env["PYTHONPATH"] = str(ROOT)
        for index in range(1, nodes + 1):
            port = _free_port()
            command = [
                sys.executable, "-m", "presence_core", "serve", "--no-db",
                "--host", "127.0.0.1", "--port", str(port), "--max-per-address", "0",
            ]  # fmt: skip
            if server is not None:
                command += ["--redis", server.url, "--node-id", f"n{index}"]
            env["PRESENCE_HOME"] = str(workdir / f"home-n{index}")
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            started.append(Server(f"n{index}", process, f"http://127.0.0.1:{port}"))
        for node in started:
            storm_bench._wait_listening(node.url, timeout=60)
        name = f"cluster of {nodes}" if clustered else "one process, no Redis"
        yield Deployment(name, started, server)
    finally:
        for node in started:
            node.process.terminate()
        for node in started:
            try:
                node.process.wait(15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        if server is not None:
            server.stop()


@contextmanager
def spread_over(urls: list[str]) -> Iterator[None]:
    """The storm and crowd clients of bench_server(_v2), each sent to the next node in
    turn instead of the one URL those benchmarks give every client."""
    turn = iter(range(10**9))

    class SpreadRaw(storm_bench.RawClient):
        async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
            await super().connect(session, urls[next(turn) % len(urls)])

    class SpreadTeam(v2_bench.TeamClient):
        async def join(self, session: aiohttp.ClientSession, url: str) -> None:
            await super().join(session, urls[self.uid % len(urls)])

    saved = storm_bench.RawClient, v2_bench.TeamClient
    storm_bench.RawClient, v2_bench.TeamClient = SpreadRaw, SpreadTeam
    try:
        yield
    finally:
        storm_bench.RawClient, v2_bench.TeamClient = saved


@contextmanager
def peak_connections(deploy: Deployment) -> Iterator[None]:
    """Sample every node's /health while the body runs; keep each one's peak."""
    stop = threading.Event()
    peaks = dict.fromkeys((n.name for n in deploy.nodes), 0)

    def sample() -> None:
        while not stop.is_set():
            for node in deploy.nodes:
                health = _health(node.url)
                if health is not None:
                    peaks[node.name] = max(peaks[node.name], int(health.get("connections", 0)))
            stop.wait(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        deploy.peak_connections = peaks


# --- what Redis did --------------------------------------------------------------------------


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _stream_length(client: redis.Redis) -> int:
    """Entries ever added to the stream (XINFO's entries-added survives trimming)."""
    try:
        info = client.xinfo_stream(EVENTS)
    except redis.ResponseError:  # no stream yet
        return 0
    return int(info.get("entries-added", info.get("length", 0)))


@dataclass
class RedisUse:
    transitions: int
    commands: dict[str, float]  # per transition, idle background subtracted
    idle_per_second: float  # the nodes' background, all nodes together

    @property
    def per_transition(self) -> float:
        return sum(self.commands.values())


class RedisMeter:
    """Redis commands over a run, less the idle rate measured just before it."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __enter__(self) -> RedisMeter:
        first = _commandstats(self.client)
        time.sleep(3)  # the nodes' background (alive, reap, blocked reads) alone
        self.before = _commandstats(self.client)
        self.idle = {k: (self.before.get(k, 0) - first.get(k, 0)) / 3 for k in self.before}
        self.stream_before = _stream_length(self.client)
        self.started = time.monotonic()
        return self

    def settle(self, transitions: int, timeout: float = 60) -> None:
        """Wait until ``transitions`` more entries are in the stream (the offline of
        every client comes after its grace period), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _stream_length(self.client) - self.stream_before >= transitions:
                return
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.started
        after = _commandstats(self.client)
        transitions = _stream_length(self.client) - self.stream_before

        def counted(name: str) -> bool:  # not this meter's own INFO and XINFO
            return name != "info" and not name.startswith("xinfo")

        commands = {}
        for name, calls in after.items():
            used = calls - self.before.get(name, 0) - self.idle.get(name, 0) * seconds
            if counted(name) and used > 0.5:
                commands[name] = used / max(transitions, 1)
        idle = sum(v for k, v in self.idle.items() if counted(k))
        self.use = RedisUse(transitions, commands, idle)


# --- the runs --------------------------------------------------------------------------------


@dataclass
class Run:
    deployment: str
    nodes: int
    what: str
    storm: StormResult | None = None
    crowd: CrowdRun | None = None
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0  # nodes + Redis
    redis_cpu: float = 0.0
    redis: RedisUse | None = None


def _cpu(processes: list[psutil.Process]) -> list[float]:
    out = []
    for p in processes:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.NoSuchProcess:
            out.append(0.0)
    return out


def _measured(
    deploy: Deployment, what: str, users: int, body: Callable[[], StormResult | CrowdRun]
) -> Run:
    """Run ``body()`` (the load of ``users`` users) against ``deploy``, measuring peaks,
    and CPU and Redis until the nodes have done all the work the load gave them: every
    user offline again after its grace (each node's ``/health`` ``users`` at 0), so a
    node that lags is charged for what it still had to do."""
    run = Run(deploy.name, len(deploy.nodes), what)
    processes = deploy.processes()
    client = deploy.redis_client()
    meter = RedisMeter(client) if client is not None else None
    if meter is not None:
        meter.__enter__()
    before = _cpu(processes)
    with spread_over(deploy.urls), peak_connections(deploy):
        result = body()
    _wait_empty(deploy)
    if meter is not None:
        meter.settle(2 * users)  # each user online, then offline after its grace
    after = _cpu(processes)
    if meter is not None:
        meter.__exit__(None, None, None)
        run.redis = meter.use
        run.redis_cpu = after[-1] - before[-1]
    run.cpu = sum(after) - sum(before)
    run.peaks = deploy.peak_connections
    if isinstance(result, StormResult):
        run.storm = result
    else:
        run.crowd = result
    return run


def _wait_empty(deploy: Deployment, timeout: float = 90) -> None:
    """Until every node says nobody is present (the load's last offline is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        healths = [_health(n.url) or {} for n in deploy.nodes]
        if all(h.get("users", 1) == 0 for h in healths):
            return
        time.sleep(0.2)
    print(f"{deploy.name}: users still present after {timeout:g} s", flush=True)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return "∞" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


def _peaks(run: Run) -> str:
    return " / ".join(str(run.peaks[k]) for k in sorted(run.peaks))


def _redis_cell(run: Run) -> str:
    if run.redis is None:
        return "–"
    return f"{run.redis.per_transition:.1f}"


def _score(run: Run) -> float:
    """Lower is better: a storm's p95 latency, a crowd's time to complete (else p95)."""
    if run.storm is not None:
        return run.storm.latency_p95
    assert run.crowd is not None
    done = run.crowd.complete_after_last
    return done if done is not None else 1000 + run.crowd.latency_p95


def best_of(
    repeat: int,
    nodes: int,
    clustered: bool,
    scratch: str,
    what: str,
    users: int,
    load: Callable[[Deployment], StormResult | CrowdRun],
) -> Run:
    """The best of ``repeat`` runs, each on fresh processes (the machine is shared)."""
    best = None
    for _ in range(max(1, repeat)):
        with deployment(nodes, clustered, Path(scratch)) as deploy:
            run = _measured(deploy, what, users, lambda d=deploy: load(d))
        print(run, flush=True)
        if best is None or _score(run) < _score(best):
            best = run
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2,4", help="cluster sizes (default 1,2,4)")
    parser.add_argument("--storm", default="200,400,800", help="storm sizes (default 200,400,800)")
    parser.add_argument("--spread", type=float, default=2.0, help="seconds of a storm (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="convergence limit, s")
    parser.add_argument("--v2-users", type=int, default=2000, help="v2 shift start (default 2000)")
    parser.add_argument("--teams", type=int, default=10, help="teams of the v2 crowd (default 10)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each, the best kept (default 1)"
    )
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    sizes = [int(s) for s in args.storm.split(",") if s.strip()]
    plans = [(1, False)] + [(int(n), True) for n in args.nodes.split(",") if n.strip()]
    load_before = os.getloadavg()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as scratch:
        for nodes, clustered in plans:
            for users in sizes:

                def storm(d: Deployment, u: int = users) -> StormResult:
                    return asyncio.run(storm_bench._storm(d.urls[0], u, args.spread, args.timeout))

                runs.append(best_of(args.repeat, nodes, clustered, scratch, f"storm {users}",
                                    users, storm))  # fmt: skip
            if args.v2_users:

                def crowd(d: Deployment) -> CrowdRun:
                    crowd_of = v2_bench._crowd(
                        d.nodes[0], args.v2_users, args.teams, args.spread, args.timeout, True
                    )
                    return asyncio.run(crowd_of)

                runs.append(best_of(args.repeat, nodes, clustered, scratch,
                                    f"v2 {args.v2_users}", args.v2_users, crowd))  # fmt: skip
    load_after = os.getloadavg()
    body = report(runs, args, load_before, load_after)
    print(body)
    if not args.no_record:
        record("cluster", "Presence cluster: 1, 2 and 4 nodes sharing Redis", body)
    return 0


def report(
    runs: list[Run],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    storm_rows, crowd_rows, redis_rows = [], [], []
    base_storm = {r.storm.users: r for r in runs if r.storm and r.redis is None}
    base_crowd = next((r for r in runs if r.crowd and r.redis is None), None)
    for r in runs:
        if r.storm:
            s, b = r.storm, base_storm.get(r.storm.users)
            ratio = (
                f"{s.convergence / b.storm.convergence:.2f}"
                if b and b is not r and s.convergence and b.storm.convergence
                else "–"
            )
            storm_rows.append([r.deployment, s.users, _peaks(r), f"{s.messages:,}",
                               _ms(s.convergence), _ms(s.latency_p50), _ms(s.latency_p95),
                               s.connect_failures, f"{r.cpu:.1f} s",
                               f"{r.cpu / max(s.messages, 1) * 1e6:.0f} µs", ratio,
                               "**broken**" if s.broken else "ok"])  # fmt: skip
        if r.crowd:
            c = r.crowd
            cpu_ratio = (
                f"{r.cpu / base_crowd.cpu:.2f}" if base_crowd and base_crowd is not r else "–"
            )
            crowd_rows.append([r.deployment, c.users, _peaks(r), c.connect_failures,
                               f"{c.complete}/{c.users - c.connect_failures}",
                               _ms(c.complete_after_last), _ms(c.latency_p50),
                               _ms(c.latency_p95), f"{c.changes:,}", f"{r.cpu:.1f} s",
                               f"{r.cpu / max(c.changes, 1) * 1e6:.0f} µs",
                               cpu_ratio])  # fmt: skip
        if r.redis is not None:
            top = sorted(r.redis.commands.items(), key=lambda kv: -kv[1])[:6]
            redis_rows.append([r.deployment, r.what, f"{r.redis.transitions:,}",
                               _redis_cell(r),
                               ", ".join(f"{k} {v:.2f}" for k, v in top),
                               f"{r.redis.idle_per_second:.1f}/s",
                               f"{r.redis_cpu:.1f} s"])  # fmt: skip
    return "\n\n".join(
        [
            "Fresh processes for every row: N `presence serve --no-db --redis` nodes sharing "
            "a fresh `redis-server`, or one process without Redis (the baseline, as a "
            "single process works today). The clients are bench_server's and "
            "bench_server_v2's raw Engine.IO clients, spread over the nodes in turn (as "
            "HAProxy's leastconn spreads them; HAProxy itself left out). Connections: each "
            "node's peak from its `/health` (sampled every 0.25 s). CPU: the nodes' and "
            "Redis's together, from the first login until every user is offline again "
            "(the grace period after the clients left included, so a node that lags is "
            "charged for all its work). The load generator runs in one Python process on "
            "the same machine.",
            f"Login storm (`_storm` of bench_server: N users within {args.spread:g} s, every "
            "announcement to every client; convergence after the last announcement; broken: "
            f"not converged within {args.timeout:g} s or p95 over 1 s). Ratio: convergence "
            "÷ the single process's for the same N.",
            table(
                [
                    "deployment",
                    "N",
                    "connections per node",
                    "messages",
                    "convergence",
                    "p50",
                    "p95",
                    "connect failures",
                    "CPU",
                    "CPU per message",
                    "÷ single",
                    "verdict",
                ],
                storm_rows,
            ),  # fmt: skip
            f"Shift start with protocol version 2 (`_crowd` of bench_server_v2: "
            f"{args.v2_users:,} users in {args.teams} teams, each subscribes to its team, then "
            "announces itself; complete: every client holds its team). CPU ratio: ÷ the "
            "single process's.",
            table(
                [
                    "deployment",
                    "users",
                    "connections per node",
                    "connect failures",
                    "complete",
                    "all complete after last login",
                    "p50",
                    "p95",
                    "changes delivered",
                    "CPU",
                    "CPU per change",
                    "CPU ÷ single",
                ],
                crowd_rows,
            )  # fmt: skip
            if crowd_rows
            else "_v2 crowd skipped_",
            "Redis per transition (`INFO commandstats` before and after each run, less the "
            "nodes' idle background measured for 3 s before it; transitions: entries added "
            f"to `{EVENTS}`, logins and the offline after each client's grace):",
            table(
                [
                    "deployment",
                    "run",
                    "transitions",
                    "commands per transition",
                    "most used (per transition)",
                    "idle background",
                    "Redis CPU",
                ],
                redis_rows,
            )  # fmt: skip
            if redis_rows
            else "_no cluster run_",
            overhead(runs),
            f"Machine load (1-minute average): {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after, on {os.cpu_count()} cores shared with other work.",
            NOTE,
        ]
    )


def overhead(runs: list[Run]) -> str:
    """The cluster's own CPU per login: a one-node cluster less one process alone."""
    single = {r.what: r for r in runs if r.redis is None}
    parts = []
    for r in runs:
        base = single.get(r.what)
        if r.redis is None or r.nodes != 1 or base is None:
            continue
        users = int(r.what.split()[-1])
        extra = (r.cpu - base.cpu) / max(users, 1) * 1e3
        parts.append(f"{r.what}: {extra:.2f} ms")
    if not parts:
        return ""
    return (
        "CPU per login, a one-node cluster less one process alone (same load, both until "
        "every user is offline again, Redis's own CPU included): "
        + "; ".join(parts)
        + ". Near zero or below: what Redis costs is paid back because the stream "
        "delivers transitions in batches, and the frames a connection has waiting leave "
        "in one write (presence_core/server/batching.py); at this machine's load the "
        "differences are within the noise."
    )


NOTE = """\
Reading it. On this machine every row shares the same two cores among the nodes,
Redis and the load generator, so more nodes cannot be faster here: the ratios show
the cluster's overhead (a script call per transition, each node reading every
transition from the stream and keeping its mirror), not its gain. Guide clients
get as many messages as from one process. Version-2 clients get more changes in
diffs: a node's mirror (what a subscribe answer holds) follows the stream, a little
behind the scripts, so more of a team's logins arrive in diffs and fewer in the
answer; no change reaches a client twice. What more cores would give:
with a core per node (and one for Redis, which stays far from busy), each node
delivers only to its own clients, so the fan-out that breaks one process (N²/2 in a
guide storm) is divided by the number of nodes, while the per-transition work (the
script call of the node that saw it, and the stream read and mirror update on every
node) is paid once per node; the cluster then holds about as many times more
connections as it has nodes, and a storm breaks later by about the square root of
that factor (its cost grows as N²)."""


if __name__ == "__main__":
    raise SystemExit(main())
