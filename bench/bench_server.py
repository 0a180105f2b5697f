"""The presence server under load, beside the guide's Node server in the same run.

    python -m bench.bench_server                    # small defaults (about a minute)
    python -m bench.bench_server --hold 3000 --storm 200,400,800,1600

1. Connections held: open ``--hold`` idle connections to one server process
   and measure the process's resident memory per connection.
2. Login storm: N users connect within ``--spread`` seconds and each announces
   itself; every announcement is broadcast to every connected client (the guide's
   design), so a storm of N delivers about N²/2 messages. Measured: how long until
   every client has heard every announcement (convergence), and how late one
   watcher hears each announcement (latency), for our server and the Node server,
   reported as ratios. The storm sizes grow until a server breaks (the last client
   not converged within ``--timeout`` s, or p95 latency over a second).

Both servers run as subprocesses on 127.0.0.1 (ours with its defaults: uvloop's event
loop since it became the default); the load comes from lightweight raw
Engine.IO v4 websocket clients (aiohttp; counting, not parsing, the broadcasts) so
the clients are not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from bench.report import record, table

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


# --- the servers ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss


def _wait_listening(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/socket.io/?EIO=4&transport=polling", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not start")


@contextmanager
def ours(*options: str) -> Iterator[Server]:
    """`presence serve --no-db` in a process of its own (``options``: more flags)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "serve", "--no-db", "--port", str(port), *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    name = "ours (python-socketio" + (f", {' '.join(options)})" if options else ")")
    yield from _running(name, process, port)


@contextmanager
def node() -> Iterator[Server]:
    """The guide's backend (tests/node/guide_server.js)."""
    port = _free_port()
    process = subprocess.Popen(
        ["node", str(NODE_DIR / "guide_server.js"), str(port)],
        cwd=NODE_DIR,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield from _running("guide (Node socket.io)", process, port)


def _running(name: str, process: subprocess.Popen, port: int) -> Iterator[Server]:
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(url)
        yield Server(name, process, url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- a raw Engine.IO v4 / Socket.IO v5 websocket client ---------------------------------------


class RawClient:
    """Connects, announces, answers pings and counts ``userStatusChanged`` messages."""

    def __init__(self, track: bool = False) -> None:
        self.track = track
        self.count = 0
        self.heard: dict[int, float] = {}  # userId -> monotonic time (tracked clients)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await session.ws_connect(ws_url, max_msg_size=0, autoping=True)
        opening = await self.ws.receive_str()
        assert opening.startswith("0"), opening
        await self.ws.send_str("40")
        joined = await self.ws.receive_str()
        assert joined.startswith("40"), joined
        self.task = asyncio.create_task(self._read())

    async def emit(self, event: str, data: object) -> None:
        assert self.ws is not None
        await self.ws.send_str("42" + json.dumps([event, data], separators=(",", ":")))

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = message.data
            if not isinstance(data, str):
                continue
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith('42["userStatusChanged"'):
                self.count += 1
                if self.track:
                    payload = json.loads(data[2:])[1]
                    if payload["status"] == "online":
                        self.heard.setdefault(payload["userId"], time.monotonic())

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()


# --- the measurements -------------------------------------------------------------------------


@dataclass
class StormResult:
    users: int
    convergence: float | None  # seconds after the last announcement; None: never
    messages: int
    latency_p50: float
    latency_p95: float
    latency_max: float
    connect_failures: int

    @property
    def broken(self) -> bool:
        return self.convergence is None or self.latency_p95 > 1.0


async def _storm(url: str, users: int, spread: float, timeout: float) -> StormResult:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        watcher = RawClient(track=True)
        await watcher.connect(session, url)
        clients: list[RawClient] = []
        expected: list[int] = []
        sent_at: dict[int, float] = {}
        failures = 0
        start = time.monotonic()

        async def one(index: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, start + index * spread / users - time.monotonic()))
            client = RawClient()
            try:
                await client.connect(session, url)
            except (TimeoutError, aiohttp.ClientError, OSError, AssertionError):
                failures += 1
                return
            clients.append(client)
            expected.append(index)
            sent_at[index] = time.monotonic()
            await client.emit(
                "userOnline", {"userId": index, "userType": "agent", "userName": f"U{index}"}
            )

        await asyncio.gather(*(one(i) for i in range(users)))
        last_sent = time.monotonic()
        announced = len(sent_at)
        order = sorted(sent_at, key=sent_at.get)
        position = {uid: pos for pos, uid in enumerate(order)}

        def converged() -> bool:
            if len(watcher.heard) < announced:
                return False
            # a client hears every announcement made from its own onwards
            return all(
                c.count >= announced - position[uid]
                for c, uid in zip(clients, expected, strict=True)
            )

        convergence = None
        deadline = last_sent + timeout
        while time.monotonic() < deadline:
            if converged():
                convergence = time.monotonic() - last_sent
                break
            await asyncio.sleep(0.01)
        latencies = sorted(watcher.heard[u] - sent_at[u] for u in sent_at if u in watcher.heard)
        messages = sum(c.count for c in clients) + watcher.count
        await asyncio.gather(*(c.close() for c in clients), watcher.close())
    if not latencies:
        latencies = [float("inf")]
    return StormResult(
        users=users,
        convergence=convergence,
        messages=messages,
        latency_p50=statistics.median(latencies),
        latency_p95=latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))],
        latency_max=latencies[-1],
        connect_failures=failures,
    )


async def _hold(server: Server, count: int) -> tuple[int, int, float]:
    """Open ``count`` idle connections; return (rss before, rss after, seconds)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.sleep(0.5)
        before = server.rss()
        clients = []
        started = time.monotonic()
        for batch in range(0, count, 100):
            group = [RawClient() for _ in range(min(100, count - batch))]
            await asyncio.gather(*(c.connect(session, server.url) for c in group))
            clients.extend(group)
        await asyncio.sleep(1.0)  # let the server settle
        after = server.rss()
        seconds = time.monotonic() - started
        await asyncio.gather(*(c.close() for c in clients))
    return before, after, seconds


@dataclass
class CrowdResult:
    connects: int
    events: int
    deliveries: int
    server_cpu: float  # seconds of CPU the server process used
    server_rss: int


async def _crowd(server: Server, users: int, speed: float, duration: float) -> CrowdResult:
    """The simulated crowd (presence simulate) living a morning against ``server``."""
    from datetime import UTC, datetime

    from presence_core.synthetic.crowd import run_crowd

    process = psutil.Process(server.process.pid)
    cpu = process.cpu_times()
    stats = await run_crowd(
        server.url,
        users=users,
        speed=speed,
        duration=duration,
        seed=1,
        start=datetime(2026, 3, 3, 7, 30, tzinfo=UTC),  # a Tuesday: Europe logs in
        heartbeat=5,
    )
    after = process.cpu_times()
    return CrowdResult(
        connects=stats.connects,
        events=stats.events_sent,
        deliveries=stats.broadcasts_received,
        server_cpu=(after.user + after.system) - (cpu.user + cpu.system),
        server_rss=process.memory_info().rss,
    )


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return "∞" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", type=int, default=1000, help="connections held (default 1000)")
    parser.add_argument(
        "--storm",
        default="100,200,400,800,1600",
        help="storm sizes in users, tried in order until a server breaks (default 100,...,1600)",
    )
    parser.add_argument("--spread", type=float, default=2.0, help="seconds of a storm (default 2)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="convergence limit in s (default 10)"
    )
    parser.add_argument(
        "--crowd", type=int, default=300, help="simulated crowd size (default 300; 0: skip)"
    )
    parser.add_argument(
        "--crowd-seconds", type=float, default=10.0, help="how long the crowd lives (default 10)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per storm size, the best kept (default 1)"
    )
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    sizes = [int(s) for s in args.storm.split(",") if s.strip()]
    load_before = os.getloadavg()[0]
    have_node = (NODE_DIR / "node_modules" / "socket.io").exists()
    servers = [ours, node] if have_node else [ours]

    hold_rows = []
    for make in servers:
        with make() as server:
            before, after, seconds = asyncio.run(_hold(server, args.hold))
            per = (after - before) / max(args.hold, 1)
            hold_rows.append([server.name, args.hold, f"{before / 2**20:.0f} MiB",
                              f"{after / 2**20:.0f} MiB", f"{per / 1024:.1f} KiB",
                              f"{seconds:.1f} s"])  # fmt: skip
            print("hold", hold_rows[-1], flush=True)

    crowd_rows = []
    crowd_cpu: dict[str, float] = {}
    crowd_deliveries: dict[str, int] = {}
    if args.crowd > 0:
        for make in servers:
            with make() as server:
                c = asyncio.run(_crowd(server, args.crowd, 600, args.crowd_seconds))
            crowd_cpu[server.name] = c.server_cpu / max(c.deliveries, 1) * 1e6
            crowd_deliveries[server.name] = c.deliveries
            crowd_rows.append([server.name, c.connects, f"{c.events:,}", f"{c.deliveries:,}",
                               f"{c.server_cpu:.2f} s", f"{crowd_cpu[server.name]:.1f} µs",
                               f"{c.server_rss / 2**20:.0f} MiB"])  # fmt: skip
            print("crowd", crowd_rows[-1], flush=True)

    storm: dict[str, list[StormResult]] = {}
    for make in servers:
        for users in sizes:
            result = None
            for _ in range(args.repeat):  # best of: the machine is shared and noisy
                with make() as server:
                    attempt = asyncio.run(_storm(server.url, users, args.spread, args.timeout))
                print(server.name, attempt, flush=True)
                if result is None or attempt.latency_p95 < result.latency_p95:
                    result = attempt
                if attempt.convergence is None:
                    break  # a storm that never converged is not worth a second try
            storm.setdefault(server.name, []).append(result)
            if result.broken:
                break  # bigger storms only break harder

    servers_names = list(crowd_cpu)
    delivery_ratio = (
        crowd_deliveries[servers_names[0]] / max(crowd_deliveries[servers_names[1]], 1)
        if len(servers_names) == 2
        else 0.0
    )
    storm_rows = []
    for name, results in storm.items():
        for r in results:
            storm_rows.append([name, r.users, f"{r.messages:,}", _ms(r.convergence),
                               _ms(r.latency_p50), _ms(r.latency_p95), _ms(r.latency_max),
                               r.connect_failures, "**broken**" if r.broken else "ok"])  # fmt: skip
    ratio_rows = []
    if len(storm) == 2:
        (ours_name, our_results), (node_name, node_results) = storm.items()
        for a, b in zip(our_results, node_results, strict=False):
            if a.convergence and b.convergence:
                ratio_rows.append([a.users, f"{a.convergence / b.convergence:.2f}",
                                   f"{a.latency_p95 / b.latency_p95:.2f}"])  # fmt: skip

    def breaking(results: list[StormResult]) -> str:
        broken = [r.users for r in results if r.broken]
        ok = [r.users for r in results if not r.broken]
        if broken:
            return f"breaks at {broken[0]} users (last fine: {max(ok) if ok else 'none'})"
        return f"held up to {max(ok)} users (the largest size tried)"

    body = "\n\n".join(
        [
            f"Connections held by one server process (`--hold {args.hold}` idle connections; "
            "the storm below shows announced ones):",
            table(
                [
                    "server",
                    "connections",
                    "RSS before",
                    "RSS after",
                    "per connection",
                    "time to connect",
                ],
                hold_rows,
            ),  # fmt: skip
            f"A simulated crowd (`presence simulate`: {args.crowd} users, speed 600, "
            f"{args.crowd_seconds:g} s from a Tuesday 07:30 UTC, heartbeats every 5 s) against "
            "each server; CPU is the server process's own:",
            table(
                [
                    "server",
                    "connections",
                    "events sent",
                    "broadcasts delivered",
                    "server CPU",
                    "CPU per delivery",
                    "server RSS",
                ],
                crowd_rows,
            )  # fmt: skip
            if crowd_rows
            else "_crowd skipped_",
            (
                "CPU per delivery, ours ÷ Node: "
                f"{crowd_cpu[servers_names[0]] / crowd_cpu[servers_names[1]]:.2f}. "
                "Broadcasts for the same crowd, ours ÷ Node: "
                f"{delivery_ratio:.2f}"
                ". They broadcast different things: ours also broadcasts `userStatus` changes "
                "(away, busy), which the guide's server ignores; the guide's server broadcasts "
                "every repeated `userOnline` (extra tabs, reconnects) and every network blip "
                "that our grace period absorbs."
                if len(crowd_cpu) == 2
                else ""
            ),
            f"Login storm (best of {args.repeat} run(s) per size, each on a fresh server; on a "
            "shared machine single runs vary a lot, `--repeat 3` steadies them): "
            f"N users connect within {args.spread:g} s, each `userOnline` is "
            "broadcast to every connected client (about N²/2 messages). Convergence: time "
            "after the last announcement until every client has heard every announcement; "
            "latency: announcement → one watcher hears it (both polled every 10 ms, so figures "
            'near 10 ms mean "at once"). Broken: not converged within '
            f"{args.timeout:g} s, or p95 latency over 1 s.",
            table(
                [
                    "server",
                    "N",
                    "messages",
                    "convergence",
                    "p50",
                    "p95",
                    "max",
                    "connect failures",
                    "verdict",
                ],
                storm_rows,
            ),  # fmt: skip
            "Ours ÷ Node, same sizes (below 1: ours is faster):",
            table(["N", "convergence ratio", "p95 latency ratio"], ratio_rows)
            if ratio_rows
            else "_no pair converged on both servers_",
            "Where the broadcast breaks: "
            + "; ".join(f"{name}: {breaking(results)}" for name, results in storm.items())
            + ".",
            f"Machine load (1-minute average): {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores shared with other "
            "work; the load generator runs on the same machine.",
            NOTE,
        ]
    )
    print(body)
    if not args.no_record:
        record("server", "Presence server: connections, memory, login storm", body)
    return 0


NOTE = """\
The guide's broadcast sends every change to every client: a storm of N logins costs
N²/2 deliveries, whatever the server. Guide clients still get it, made cheaper: each
change is encoded once, and the frames a connection has waiting leave in one write
(presence_core/server/batching.py). Clients that can, speak protocol version 2
(docs/server.md): they watch a team, some users or everything, and get one
`presenceDiff` a tick with what changed among those; `bench/bench_server_v2.py`
measures a 2,000-user shift start that way. Beyond one process: `presence serve
--redis` nodes behind HAProxy share the fan-out (docs/cluster.md, bench:cluster)."""


if __name__ == "__main__":
    raise SystemExit(main())
