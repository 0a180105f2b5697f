"""A shift start with protocol version 2, beside the same crowd as guide clients.

    python -m bench.bench_server_v2                      # 2,000 users in 10 teams, 2 s
    python -m bench.bench_server_v2 --users 500 --no-record

N users in T teams log in within ``--spread`` seconds; each wants to hold its own
team's complete state (who of the team is online). Four runs, each on a fresh
server process:

- ours, version 2, under uvloop's loop (the default) and under ``--loop asyncio``:
  each client connects with ``protocol: 2``, subscribes to its team (the
  acknowledgement is the team's state), then announces itself; the team's later
  logins arrive in ``presenceDiff`` frames;
- ours and the guide's Node server, guide clients: each announces itself and asks
  ``getOnlineUsers`` (the state so far), then hears every ``userStatusChanged``
  broadcast (everyone's, N²/2 in all) and keeps its team's.

Measured: when every client holds its team's complete state, after the last login
(target for version 2: within 1 s); change → client latency over every delivery of
a team member's login made after the client's own (target p95 ≤ 500 ms); messages
and changes delivered; the server's CPU per delivered change, and per needed change
(a change about the client's own team: what it wants).

The clients are raw Engine.IO v4 websocket clients (aiohttp) in this one process,
on uvloop's event loop (:func:`run_crowd`); they read what they need out of each
frame and nothing more (:data:`_CHANGE`), but the process is near a core during the
logins, so its own queueing is part of what is measured: the figures are the
crowd's, not the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial

import aiohttp
import psutil

try:
    import uvloop
except ImportError:  # not on Windows (requirements.txt)
    uvloop = None

from bench.bench_server import Server, node, ours
from bench.report import record, table

# --- a raw client that wants its team's state ------------------------------------------------

# What a client reads of a frame: the user ids (of a subscribe acknowledgement, an online
# list) and each change's id and status (of a presenceDiff; the server writes "userId"
# then "status" in every entry, protocol.diff_change). Decoding whole frames with
# json.loads was a quarter of the crowd's CPU (a 200-user team's acknowledgement is
# ~40 kB): one process holding 2,000 clients was then near a full core, and the
# latencies it measured included its own queueing.
_USER_ID = re.compile(r'"userId":(\d+)')
_CHANGE = re.compile(r'"userId":(\d+),"status":"(\w+)"')


class TeamClient:
    """One user of team ``team``: announces itself and keeps who of the team is online."""

    def __init__(self, uid: int, team: int, v2: bool, sent_at: dict[int, float], teams: int):
        self.uid, self.team, self.v2 = uid, team, v2
        self.teams = teams
        self.sent_at = sent_at
        self.known: set[int] = set()
        self.latencies: list[float] = []
        self.messages = 0  # socket.io events received
        self.changes = 0  # changes delivered (a diff's changes, or broadcasts)
        self.needed = 0  # of which about the client's own team (what it wants)
        self.joined_at = 0.0
        self.join_took = 0.0  # from its connection attempt to its Socket.IO connect's answer
        self.complete_at: float | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = None

    def _mine(self, uid: int) -> bool:
        return uid % self.teams == self.team

    def _heard(self, uid: int, live: bool, now: float) -> None:
        if not self._mine(uid):
            return
        if live and uid in self.sent_at and self.sent_at[uid] >= self.joined_at:
            self.latencies.append(now - self.sent_at[uid])
        self.known.add(uid)

    async def join(self, session: aiohttp.ClientSession, url: str) -> None:
        began = time.monotonic()
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await session.ws_connect(ws_url, max_msg_size=0, autoping=True)
        opening = await self.ws.receive_str()
        assert opening.startswith("0"), opening
        await self.ws.send_str("40" + ('{"protocol":2}' if self.v2 else ""))
        joined = await self.ws.receive_str()
        assert joined.startswith("40"), joined
        self.joined_at = time.monotonic()
        self.join_took = self.joined_at - began
        self.task = asyncio.create_task(self._read())
        if self.v2:
            await self._emit("subscribe", {"teams": [f"T{self.team}"]}, ack=1)
        team = f"T{self.team}"
        self.sent_at[self.uid] = time.monotonic()
        await self._emit(
            "userOnline", {"userId": self.uid, "userName": f"U{self.uid}", "team": team}
        )
        if not self.v2:
            await self._emit("getOnlineUsers", None)

    async def _emit(self, event: str, data: object, ack: int | None = None) -> None:
        assert self.ws is not None
        args = [event] if data is None else [event, data]
        prefix = "42" if ack is None else f"42{ack}"
        await self.ws.send_str(prefix + json.dumps(args, separators=(",", ":")))

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = message.data
            if not isinstance(data, str):
                continue
            now = time.monotonic()
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith('42["presenceDiff"'):
                self.messages += 1
                for uid, status in _CHANGE.findall(data):
                    uid = int(uid)
                    self.changes += 1
                    self.needed += self._mine(uid)
                    if status == "online":
                        self._heard(uid, True, now)
            elif data.startswith('42["userStatusChanged"'):
                self.messages += 1
                self.changes += 1
                start = data.index('"userId":') + 9
                uid = int(data[start : data.index(",", start)])
                self.needed += self._mine(uid)
                if '"status":"online"' in data:
                    self._heard(uid, True, now)
            elif data.startswith('42["onlineUsersList"'):
                self.messages += 1
                for uid in _USER_ID.findall(data):
                    self._heard(int(uid), False, now)
            elif data.startswith("431"):  # the subscribe acknowledgement
                for uid in _USER_ID.findall(data):
                    self._heard(int(uid), False, now)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()


@dataclass
class CrowdRun:
    server: str
    protocol: str
    users: int
    connect_failures: int
    complete: int  # clients holding their team's complete state by the deadline
    complete_after_last: float | None  # the last one's, after the last login; None: never
    latency_p50: float
    latency_p95: float
    messages: int
    changes: int
    server_cpu: float
    cpu_per_change_us: float = field(default=0.0)
    needed: int = 0  # changes delivered about the client's own team
    cpu_per_needed_us: float = 0.0
    client_cpu: float = 0.0  # this process's (the crowd's) CPU during the run
    wall: float = 0.0
    join_p95: float = 0.0  # connection attempt -> Socket.IO connected, 95th percentile


async def _crowd(
    server: Server, users: int, teams: int, spread: float, timeout: float, v2: bool
) -> CrowdRun:
    process = psutil.Process(server.process.pid)
    cpu_before = process.cpu_times()
    own_before, wall_before = time.process_time(), time.monotonic()
    sent_at: dict[int, float] = {}
    clients = [TeamClient(uid, uid % teams, v2, sent_at, teams) for uid in range(users)]
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()

        async def one(index: int, client: TeamClient) -> TeamClient | None:
            nonlocal failures
            await asyncio.sleep(max(0.0, start + index * spread / users - time.monotonic()))
            try:
                await client.join(session, server.url)
            except (TimeoutError, aiohttp.ClientError, OSError, AssertionError):
                failures += 1
                return None
            return client

        joined = [c for c in await asyncio.gather(*(one(i, c) for i, c in enumerate(clients))) if c]
        last_login = max(sent_at.values()) if sent_at else time.monotonic()
        team_size = {t: sum(1 for c in joined if c.team == t) for t in range(teams)}
        deadline = last_login + timeout
        pending = list(joined)
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            still = []
            for client in pending:
                if len(client.known) >= team_size[client.team]:
                    client.complete_at = now
                else:
                    still.append(client)
            pending = still
            await asyncio.sleep(0.01)
        cpu_after = process.cpu_times()
        own_cpu, wall = time.process_time() - own_before, time.monotonic() - wall_before
        await asyncio.gather(*(c.close() for c in joined))
    latencies = sorted(x for c in joined for x in c.latencies) or [float("inf")]
    joins = sorted(c.join_took for c in joined) or [float("inf")]
    done = [c.complete_at for c in joined if c.complete_at is not None]
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    changes = sum(c.changes for c in joined)
    needed = sum(c.needed for c in joined)
    return CrowdRun(
        server=server.name,
        protocol="version 2 (team subscription)" if v2 else "guide (broadcast)",
        users=users,
        connect_failures=failures,
        complete=len(done),
        complete_after_last=(max(done) - last_login) if len(done) == len(joined) else None,
        latency_p50=statistics.median(latencies),
        latency_p95=latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))],
        messages=sum(c.messages for c in joined),
        changes=changes,
        server_cpu=cpu,
        cpu_per_change_us=cpu / max(changes, 1) * 1e6,
        needed=needed,
        cpu_per_needed_us=cpu / max(needed, 1) * 1e6,
        client_cpu=own_cpu,
        wall=wall,
        join_p95=joins[min(len(joins) - 1, int(len(joins) * 0.95))],
    )


def run_crowd(coro: Coroutine[object, object, CrowdRun]) -> CrowdRun:
    """Run a crowd on uvloop's event loop where it is installed (asyncio's elsewhere).

    The crowd's 2,000 clients share one process; under asyncio's loop its own
    machinery (selector, callbacks, transports) was a fifth of the crowd's CPU. The
    same loop runs every row, ours and Node's alike, so the comparisons stay fair."""
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return "∞" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    parser.add_argument("--teams", type=int, default=10, help="teams (default 10)")
    parser.add_argument("--spread", type=float, default=2.0, help="login window, s (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wait after, s (default 10)")
    parser.add_argument("--no-node", action="store_true", help="skip the Node server")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])

    # ours's default loop is uvloop; asyncio's gets a row of its own (v2 only)
    plans = [(partial(ours, "--loop", "asyncio"), True), (ours, True), (ours, False)]
    if not args.no_node:
        plans.append((node, False))
    runs: list[CrowdRun] = []
    load_before = os.getloadavg()
    for make, v2 in plans:
        with make() as server:
            run = run_crowd(_crowd(server, args.users, args.teams, args.spread, args.timeout, v2))
        print(run, flush=True)
        runs.append(run)
    load_after = os.getloadavg()

    rows = [
        [r.server, r.protocol, r.users, r.connect_failures,
         f"{r.complete}/{r.users - r.connect_failures}", _ms(r.complete_after_last),
         _ms(r.latency_p50), _ms(r.latency_p95), _ms(r.join_p95), f"{r.messages:,}",
         f"{r.changes:,}",
         f"{r.server_cpu:.1f} s", f"{r.cpu_per_change_us:.1f} µs",
         f"{r.needed:,}", f"{r.cpu_per_needed_us:.1f} µs",
         f"{r.client_cpu:.1f} s of {r.wall:.1f} s"]
        for r in runs
    ]  # fmt: skip
    ratios = [
        f"{v2.server} v2 ÷ {r.server} {r.protocol}: server CPU per delivered change "
        f"{v2.cpu_per_change_us / r.cpu_per_change_us:.2f}, per needed change "
        f"{v2.cpu_per_needed_us / max(r.cpu_per_needed_us, 1e-9):.2f}, in total "
        f"{v2.server_cpu / max(r.server_cpu, 1e-9):.2f}"
        for v2 in runs
        if v2.protocol.startswith("version 2")
        for r in runs
        if not r.protocol.startswith("version 2") and r.cpu_per_change_us
    ]
    body = "\n\n".join(
        [
            f"{args.users:,} users in {args.teams} teams log in within {args.spread:g} s, each "
            "wanting its own team's complete state (`python -m bench.bench_server_v2`). "
            "Version 2: `subscribe {teams: [own]}` then `userOnline`; guide clients: "
            "`userOnline`, `getOnlineUsers`, then every broadcast. Complete: every client "
            "holds its whole team (measured after the last login; targets for version 2: "
            "≤ 1 s, p95 change → client ≤ 500 ms). Latency counts every delivery of a team "
            "member's login made after the client joined. Join: from a client's connection "
            "attempt until its Socket.IO connect is answered (the server accepts a few "
            "connections a turn of its loop, docs/server.md, so under load newcomers wait in "
            "the kernel's queue rather than delay the connected). CPU is the server "
            "process's own. "
            "CPU per change divides it by every change delivered; CPU per needed change by "
            "the changes about the client's own team only (what each client wants: all a "
            "version-2 client gets, the in-team part of a guide client's broadcasts), so "
            "it compares the cost of giving every client what it needs, which is what "
            "version 2 is for; the first penalises version 2 for not delivering the rest. "
            "Ours runs under uvloop's event loop (the default), and, in a version-2 row of "
            "its own, under `--loop asyncio` (both accepting through the same connection "
            "guard, docs/server.md). The crowd runs on uvloop's loop too, and reads only the "
            "user ids and statuses it needs out of each frame (no JSON decoding): one "
            "process holds all its clients, and its own queueing is part of every latency.",
            table(
                [
                    "server",
                    "protocol",
                    "users",
                    "connect failures",
                    "complete",
                    "all complete after last login",
                    "p50",
                    "p95",
                    "join p95",
                    "messages",
                    "changes delivered",
                    "server CPU",
                    "CPU per change",
                    "needed changes",
                    "CPU per needed change",
                    "crowd CPU",
                ],
                rows,
            ),  # fmt: skip
            "; ".join(ratios) + "." if ratios else "",
            f"Machine load (1-minute average) {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after, on {os.cpu_count()} cores shared with other work: "
            "the clients run in one Python process on the same machine, so on a loaded "
            "machine they are part of what is measured (the guide-client runs above all: "
            "every client reads its own copy of the online list and of every broadcast).",
        ]
    )
    print(body)
    if not args.no_record:
        record("server-v2", "Presence server: a shift start with protocol version 2", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
