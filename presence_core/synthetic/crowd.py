"""A crowd of real Socket.IO clients: the synthetic organisation living through its shifts.

The people are those of :mod:`presence_core.synthetic.organisation` (the same user
ids, names, teams and zones as ``generate-history``), and each works the same day
the history would give them: logging in around their team's shift in its own zone,
breaks (``away``), calls (``busy``), lost connections that come back, and leaving
at the end of the day. On top of that day the crowd opens extra tabs and sometimes
closes the app instead of logging out. The plan is fixed by --seed and --start;
--speed compresses simulated time (60: a simulated minute per second), --duration
is wall-clock seconds. People already at work at the start log in during the first
moments (the ramp), in the status they were in.

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

import socketio

from presence_core import protocol
from presence_core.errors import PresenceError
from presence_core.synthetic.organisation import Person, WorkDay, organisation

log = logging.getLogger(__name__)

OPEN, CLOSE, DROP, STATUS, LOGOUT = "open", "close", "drop", "status", "logout"


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


def make_users(count: int, seed: int) -> list[Person]:
    """The organisation's first ``count`` people for ``seed`` (person ``i`` at ``i``)."""
    return organisation(seed).people(count)


def plan_crowd(
    users: list[Person], seed: int, start: datetime, sim_seconds: float, ramp: float = 0.0
) -> list[Action]:
    """Every action of every user between ``start`` and ``start + sim_seconds``, in order.

    Users already on shift at ``start`` log in during the first ``ramp`` simulated
    seconds, in the status their day has them in. The same arguments always give the
    same plan.
    """
    org = organisation(seed)
    start = start.astimezone(UTC)
    end = start + timedelta(seconds=sim_seconds)
    actions: list[Action] = []
    for user in users:
        for day in org.work_days(user, start, end):
            tabs = random.Random(f"{seed}:tabs:{user.index}:{day.day.isoformat()}")
            actions.extend(_plan_shift(user, day, tabs, start, sim_seconds, ramp))
    actions.sort()
    return actions


def _plan_shift(
    user: Person,
    day: WorkDay,
    rng: random.Random,
    start: datetime,
    horizon: float,
    ramp: float,
) -> list[Action]:
    """One working day as actions, clipped to ``[0, horizon)`` simulated seconds."""
    origin = start.timestamp()
    t0, t1 = day.login - origin, day.logout - origin
    events: list[tuple[float, str, int, str | None]] = [(t0, OPEN, 0, None)]
    events += [(at - origin, STATUS, 0, status) for at, status in day.changes]
    for lost, back in day.drops:
        events += [(lost - origin, DROP, 0, None), (back - origin, OPEN, 0, None)]
    # extra tabs, each closed some time before the end
    length = t1 - t0
    for tab, chance in ((1, 0.4), (2, 0.15)):
        if rng.random() < chance:
            opened = t0 + rng.uniform(0, length * 0.5)
            events.append((opened, OPEN, tab, None))
            events.append((rng.uniform(opened, t1), CLOSE, tab, None))
    events.append((t1, LOGOUT if day.signs_out else CLOSE, -1, None))
    events.sort(key=lambda e: e[0])
    out: list[Action] = []
    first = 0.0
    if t0 < 0:  # a shift already under way: log in during the ramp, as they are now
        first = rng.uniform(0, ramp) if ramp > 0 else 0.0
        out.append(Action(first, user.index, OPEN, 0))
        status = day.status_at(origin)
        if status != protocol.ONLINE:
            out.append(Action(first + 0.001, user.index, STATUS, 0, status))
    for at, kind, tab, status in events:
        if at < 0 or at >= horizon or (t0 < 0 and at <= first):
            continue
        out.append(Action(at, user.index, kind, tab, status))
    return out


class _Person:
    """A simulated user's connections (one AsyncClient per tab) and current status."""

    def __init__(self, crowd: _Crowd, user: Person) -> None:
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
            if action.tab < 0:  # the app closed for the day: tomorrow starts online
                self.wanted.clear()
                self.status = protocol.ONLINE
        elif action.kind == DROP:
            await self.drop(action.tab)
        elif action.kind == STATUS:
            # chosen even while the network is down: a reconnect sends it
            self.status = action.status or protocol.ONLINE
            if self.tabs:
                await self.emit(next(iter(self.tabs.values())), protocol.USER_STATUS,
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
        await self.emit(client, protocol.USER_ONLINE, self.announce())
        if self.status != protocol.ONLINE:  # a reconnect keeps the status it had
            await self.emit(
                client, protocol.USER_STATUS, {"userId": self.user.user_id, "status": self.status}
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
            await self.emit(client, protocol.USER_OFFLINE, {"userId": self.user.user_id})
        for tab in list(self.tabs):
            await self.close(tab)
        self.status = protocol.ONLINE

    async def heartbeat(self) -> None:
        for client in list(self.tabs.values()):
            if client.connected:
                await self.emit(client, protocol.USER_HEARTBEAT, {"userId": self.user.user_id})


class _Crowd:
    def __init__(self, url: str, users: list[Person], auth_secret: str | None) -> None:
        self.url = url
        self.people = [_Person(self, u) for u in users]
        self.auth_secret = auth_secret
        self.stats = CrowdStats()
        self.stopping = False
        self.retries: set[asyncio.Future] = set()

    def auth_for(self, user: Person) -> dict | None:
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

        @client.on(protocol.USER_STATUS_CHANGED)
        async def on_change(data: object = None) -> None:
            stats.broadcasts_received += 1

        @client.on(protocol.PRESENCE_ERROR)
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
