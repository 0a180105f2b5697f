"""A crowd of real Socket.IO clients living through their shifts, to drive a presence server.

Support agents and admins in teams across time zones log in at the start of their
local shift, open extra tabs, take breaks (``away``), lose their network and come
back, and leave at the end of the day; a few have a flapping connection. The plan
is fixed by --seed and --start; --speed compresses simulated time (60: a simulated
minute per second), --duration is wall-clock seconds.

Works against any server speaking the guide's protocol (the extensions it uses,
``userHeartbeat``, ``userStatus`` and ``team``, are simply ignored by the guide's
own backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import socketio

from presence_core import protocol
from presence_core.errors import PresenceError

log = logging.getLogger(__name__)

# team -> time zone of its people
TEAMS: tuple[tuple[str, str], ...] = (
    ("Support EU", "Europe/Berlin"),
    ("Support UK", "Europe/London"),
    ("Support US", "America/New_York"),
    ("Support West", "America/Los_Angeles"),
    ("Support APAC", "Asia/Singapore"),
    ("Billing", "Europe/Madrid"),
)
_FIRST_NAMES = "Ana Ben Chen Dara Eli Fatima Goran Hana Ivan Jo Kemal Lea Mia Noah Olu Priya"
_LAST_NAMES = "Abe Brandt Costa Dube Evans Fischer Garcia Horvat Ito Jensen Kim Lopez Moreau"
FIRST = tuple(_FIRST_NAMES.split())
LAST = tuple(_LAST_NAMES.split())

USER_ID_BASE = 1000

OPEN, CLOSE, DROP, STATUS, LOGOUT = "open", "close", "drop", "status", "logout"


@dataclass(frozen=True)
class SimUser:
    """One simulated person; ``user_id`` is a number, as in the guide."""

    index: int
    user_id: int
    user_name: str
    user_type: str
    team: str
    tz: str
    shift_start: float  # local hour
    shift_hours: float
    flaky: bool


@dataclass(frozen=True, order=True)
class Action:
    """Something a user does ``at`` simulated seconds after the start."""

    at: float
    user: int
    kind: str
    tab: int = 0
    status: str | None = None


@dataclass
class CrowdStats:
    """What the crowd did and saw (counts), and its view of who is present."""

    connects: int = 0
    connect_failures: int = 0
    drops: int = 0  # planned network drops
    server_drops: int = 0  # connections the server closed (each is reconnected)
    events_sent: int = 0
    broadcasts_received: int = 0
    errors_received: int = 0
    actions_done: int = 0
    actions_planned: int = 0
    present: dict[int, str] = field(default_factory=dict)  # user_id -> status
    connections: int = 0
    sim_time: datetime | None = None

    def line(self) -> str:
        when = f"{self.sim_time:%a %H:%M} UTC" if self.sim_time else "-"
        away = sum(1 for s in self.present.values() if s != protocol.ONLINE)
        return (
            f"sim {when} | present {len(self.present)} ({away} not online) | "
            f"connections {self.connections} | actions {self.actions_done}/{self.actions_planned}"
            f" | sent {self.events_sent} | drops {self.drops}+{self.server_drops}"
            f" | errors {self.errors_received}"
        )


def make_users(count: int, seed: int) -> list[SimUser]:
    """``count`` people, the same ones for the same seed."""
    rng = random.Random(f"users:{seed}")
    users = []
    for index in range(count):
        team, tz = TEAMS[index % len(TEAMS)] if index < len(TEAMS) else rng.choice(TEAMS)
        admin = rng.random() < 0.12
        users.append(
            SimUser(
                index=index,
                user_id=USER_ID_BASE + index,
                user_name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                user_type="admin" if admin else "agent",
                team=team,
                tz=tz,
                shift_start=rng.choice((6, 7, 8, 8, 9, 9, 9, 10, 12, 14)) + rng.random() * 0.5,
                shift_hours=rng.uniform(4, 6) if admin else rng.uniform(7.5, 9),
                flaky=rng.random() < 0.04,
            )
        )
    return users


def plan_crowd(
    users: list[SimUser], seed: int, start: datetime, sim_seconds: float, ramp: float = 0.0
) -> list[Action]:
    """Every action of every user between ``start`` and ``start + sim_seconds``, in order.

    Users already on shift at ``start`` log in during the first ``ramp`` simulated
    seconds. The same arguments always give the same plan.
    """
    actions: list[Action] = []
    for user in users:
        rng = random.Random(f"plan:{seed}:{user.index}")
        actions.extend(_plan_user(user, rng, start, sim_seconds, ramp))
    actions.sort()
    return actions


def _plan_user(
    user: SimUser, rng: random.Random, start: datetime, sim_seconds: float, ramp: float
) -> list[Action]:
    zone = ZoneInfo(user.tz)
    local_start = start.astimezone(zone)
    end = start + timedelta(seconds=sim_seconds)
    out: list[Action] = []
    day = local_start.date() - timedelta(days=1)
    while True:
        day_rng = random.Random(f"{rng.random()}")
        shift = datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(
            hours=user.shift_start + day_rng.gauss(0, 0.15)
        )
        if shift.astimezone(UTC) > end:
            break
        works = day.weekday() < 5 or day_rng.random() < 0.1
        if works:
            out.extend(_plan_shift(user, day_rng, shift.astimezone(UTC), start, end, ramp))
        day += timedelta(days=1)
    return out


def _plan_shift(
    user: SimUser,
    rng: random.Random,
    login: datetime,
    start: datetime,
    end: datetime,
    ramp: float,
) -> list[Action]:
    logout = login + timedelta(hours=user.shift_hours + rng.gauss(0, 0.2))
    if logout <= start or login >= end:
        return []
    t0 = (login - start).total_seconds()
    t1 = (logout - start).total_seconds()
    events: list[tuple[float, str, int, str | None]] = [(t0, OPEN, 0, None)]
    length = t1 - t0
    # extra tabs, each closed some time before the end
    for tab, chance in ((1, 0.4), (2, 0.15)):
        if rng.random() < chance:
            opened = t0 + rng.uniform(0, length * 0.5)
            events.append((opened, OPEN, tab, None))
            events.append((rng.uniform(opened, t1), CLOSE, tab, None))
    # breaks: away, then back
    for _ in range(rng.choice((1, 2, 2, 3))):
        begin = t0 + rng.uniform(0.1, 0.9) * length
        events.append((begin, STATUS, 0, "away"))
        events.append((begin + rng.uniform(5, 30) * 60, STATUS, 0, "online"))
    if user.user_type == "admin" and rng.random() < 0.5:
        begin = t0 + rng.uniform(0.1, 0.8) * length
        events.append((begin, STATUS, 0, "busy"))
        events.append((begin + rng.uniform(15, 60) * 60, STATUS, 0, "online"))
    # network drops (the flaky ones often), reconnecting after a while
    drops = rng.randint(4, 12) if user.flaky else (1 if rng.random() < 0.3 else 0)
    for _ in range(drops):
        at = t0 + rng.uniform(0.05, 0.95) * length
        back = min(at + rng.uniform(1, 90), t1 - 1)
        if back > at:
            events.append((at, DROP, 0, None))
            events.append((back, OPEN, 0, None))
    events.append((t1, LOGOUT if rng.random() < 0.7 else CLOSE, -1, None))
    events.sort(key=lambda e: e[0])
    # clip to the window: a shift already under way starts with a login in the ramp
    out: list[Action] = []
    first = 0.0
    if t0 < 0:
        first = rng.uniform(0, ramp) if ramp > 0 else 0.0
        out.append(Action(first, user.index, OPEN, 0))
    horizon = (end - start).total_seconds()
    for at, kind, tab, status in events:
        if at < 0 or at >= horizon or (t0 < 0 and at <= first):
            continue
        out.append(Action(at, user.index, kind, tab, status))
    return out


class _Person:
    """A simulated user's connections (one AsyncClient per tab) and current status."""

    def __init__(self, crowd: _Crowd, user: SimUser) -> None:
        self.crowd, self.user = crowd, user
        self.tabs: dict[int, socketio.AsyncClient] = {}
        self.wanted: set[int] = set()  # tabs the plan has open (dropped ones included)
        self.status = protocol.ONLINE

    def announce(self) -> dict:
        u = self.user
        return {
            "userId": u.user_id,
            "userType": u.user_type,
            "userName": u.user_name,
            "team": u.team,
        }

    async def act(self, action: Action) -> None:
        if action.kind == OPEN:
            self.wanted.add(action.tab)
            await self.open(action.tab)
        elif action.kind == CLOSE:
            for tab in list(self.tabs) if action.tab < 0 else [action.tab]:
                self.wanted.discard(tab)
                await self.close(tab)
            if action.tab < 0:
                self.wanted.clear()
        elif action.kind == DROP:
            await self.drop(action.tab)
        elif action.kind == STATUS and self.tabs:
            self.status = action.status or protocol.ONLINE
            await self.emit(next(iter(self.tabs.values())), "userStatus",
                            {"userId": self.user.user_id, "status": self.status})  # fmt: skip
        elif action.kind == LOGOUT:
            await self.logout()
        self.crowd.refresh(self)

    async def open(self, tab: int) -> None:
        if tab in self.tabs:
            return
        client = self.crowd.new_client(self, tab)
        try:
            await client.connect(
                self.crowd.url,
                transports=["websocket"],
                auth=self.crowd.auth_for(self.user),
                wait_timeout=10,
            )
        except (TimeoutError, socketio.exceptions.ConnectionError, OSError):
            self.crowd.stats.connect_failures += 1
            return
        self.crowd.stats.connects += 1
        self.tabs[tab] = client
        await self.emit(client, "userOnline", self.announce())
        if self.status != protocol.ONLINE:  # a reconnect keeps the status it had
            await self.emit(
                client, "userStatus", {"userId": self.user.user_id, "status": self.status}
            )

    async def reopen(self, tab: int) -> None:
        """Reconnect a tab the server dropped, retrying with backoff until the crowd stops."""
        delay = 0.5 + random.random() * 0.5  # spread the crowd's return (not part of the plan)
        while not self.crowd.stopping and tab in self.wanted and tab not in self.tabs:
            await asyncio.sleep(delay)
            if self.crowd.stopping:
                return
            await self.open(tab)
            self.crowd.refresh(self)
            delay = min(delay * 2, 5.0)

    async def emit(self, client: socketio.AsyncClient, event: str, data: dict) -> None:
        with contextlib.suppress(socketio.exceptions.BadNamespaceError):
            await client.emit(event, data)
            self.crowd.stats.events_sent += 1

    async def close(self, tab: int) -> None:
        client = self.tabs.pop(tab, None)
        if client is not None:
            with contextlib.suppress(Exception):
                # python-socketio may close the websocket before queued events are
                # written: let the queue drain first
                await asyncio.wait_for(client.eio.queue.join(), 2)
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def drop(self, tab: int) -> None:
        """Lose the network: the websocket goes without any goodbye."""
        client = self.tabs.pop(tab, None)
        if client is None:
            return
        self.crowd.stats.drops += 1
        with contextlib.suppress(Exception):
            await client.eio.ws.close()
        with contextlib.suppress(Exception):
            await client.disconnect()

    async def logout(self) -> None:
        self.wanted.clear()
        for client in list(self.tabs.values()):
            await self.emit(client, "userOffline", {"userId": self.user.user_id})
        for tab in list(self.tabs):
            await self.close(tab)
        self.status = protocol.ONLINE

    async def heartbeat(self) -> None:
        for client in list(self.tabs.values()):
            if client.connected:
                await self.emit(client, "userHeartbeat", {"userId": self.user.user_id})


class _Crowd:
    def __init__(self, url: str, users: list[SimUser], auth_secret: str | None) -> None:
        self.url = url
        self.people = [_Person(self, u) for u in users]
        self.auth_secret = auth_secret
        self.stats = CrowdStats()
        self.stopping = False
        self.retries: set[asyncio.Future] = set()

    def auth_for(self, user: SimUser) -> dict | None:
        if self.auth_secret is None:
            return None
        from presence_core.server.auth import issue_token

        return {"token": issue_token(self.auth_secret, user.user_id)}

    def new_client(self, person: _Person | None = None, tab: int = 0) -> socketio.AsyncClient:
        """A client that counts what it hears; if the server drops it (a restart, a
        network failure on the server's side), its person reconnects that tab."""
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        stats = self.stats

        @client.on("disconnect")
        async def on_disconnect(reason: object = None) -> None:
            if person is None or person.tabs.get(tab) is not client or self.stopping:
                return  # we closed it ourselves
            person.tabs.pop(tab, None)
            stats.server_drops += 1
            self.refresh(person)
            task = asyncio.ensure_future(person.reopen(tab))
            self.retries.add(task)
            task.add_done_callback(self.retries.discard)

        @client.on("userStatusChanged")
        async def on_change(data: object = None) -> None:
            stats.broadcasts_received += 1

        @client.on("presenceError")
        async def on_error(data: object = None) -> None:
            stats.errors_received += 1
            log.warning("server refused an event: %s", data)

        return client

    def refresh(self, person: _Person) -> None:
        if person.tabs:
            self.stats.present[person.user.user_id] = person.status
        else:
            self.stats.present.pop(person.user.user_id, None)
        self.stats.connections = sum(len(p.tabs) for p in self.people)


async def run_crowd(
    server_url: str,
    users: int = 50,
    speed: float = 60.0,
    duration: float = 60.0,
    seed: int = 1,
    *,
    start: datetime | None = None,
    auth_secret: str | None = None,
    heartbeat: float = 15.0,
    ramp: float = 2.0,
    progress: Callable[[CrowdStats], None] | None = None,
    progress_every: float = 2.0,
    stop: asyncio.Event | None = None,
) -> CrowdStats:
    """Run the crowd against ``server_url`` for ``duration`` wall-clock seconds.

    ``speed`` simulated seconds pass per real second, from ``start`` (default now).
    ``heartbeat``: real seconds between ``userHeartbeat``s on every connection (0:
    none). ``ramp``: real seconds over which users already on shift log in. Setting
    ``stop`` ends the run early. At the end everyone logs out (``userOffline``) and
    disconnects. Raises PresenceError when the server cannot be reached at all.
    """
    if users < 0 or speed <= 0 or duration < 0:
        raise PresenceError("--users must be >= 0, --speed > 0 and --duration >= 0")
    start = (start or datetime.now(UTC)).astimezone(UTC)
    people = make_users(users, seed)
    plan = plan_crowd(people, seed, start, duration * speed, ramp * speed)
    crowd = _Crowd(server_url, people, auth_secret)
    stats = crowd.stats
    stats.actions_planned = len(plan)
    stop = stop or asyncio.Event()
    await _probe(server_url, crowd)

    began = time.monotonic()
    by_user: dict[int, list[Action]] = {}
    for action in plan:
        by_user.setdefault(action.user, []).append(action)

    async def live(person: _Person, actions: list[Action]) -> None:
        for action in actions:
            delay = began + action.at / speed - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            try:
                await person.act(action)
            except Exception as exc:  # noqa: BLE001 - one person's trouble must not end the crowd
                log.warning("user %s: %s failed: %s", person.user.user_id, action.kind, exc)
            stats.actions_done += 1

    async def beat() -> None:
        while heartbeat > 0:
            await asyncio.sleep(heartbeat)
            for person in crowd.people:
                await person.heartbeat()

    async def report() -> None:
        while True:
            stats.sim_time = start + timedelta(seconds=(time.monotonic() - began) * speed)
            if progress is not None:
                progress(stats)
            await asyncio.sleep(progress_every)

    helpers = [asyncio.create_task(beat()), asyncio.create_task(report())]
    lives = [asyncio.create_task(live(crowd.people[i], a)) for i, a in by_user.items()]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    stop.set()
    crowd.stopping = True
    await asyncio.gather(*lives, *crowd.retries, return_exceptions=True)
    for task in helpers:
        task.cancel()
    await asyncio.gather(*helpers, return_exceptions=True)
    await asyncio.gather(*(_leave(p) for p in crowd.people), return_exceptions=True)
    for person in crowd.people:
        crowd.refresh(person)
    stats.sim_time = start + timedelta(seconds=(time.monotonic() - began) * speed)
    if progress is not None:
        progress(stats)
    return stats


async def _leave(person: _Person) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(person.logout(), 10)


async def _probe(url: str, crowd: _Crowd) -> None:
    client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    probe_auth = None
    if crowd.auth_secret is not None:
        from presence_core.server.auth import issue_token

        probe_auth = {"token": issue_token(crowd.auth_secret, observer=True)}
    try:
        await client.connect(url, transports=["websocket"], auth=probe_auth, wait_timeout=10)
    except (TimeoutError, socketio.exceptions.ConnectionError, OSError) as exc:
        raise PresenceError(f"cannot connect to the presence server at {url}: {exc}") from None
    await client.disconnect()


# --- the `presence simulate` command --------------------------------------------------------
