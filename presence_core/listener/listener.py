"""Log every status transition a presence server announces into PostgreSQL, until stopped.

The listener is a python-socketio ``AsyncClient`` that speaks the guide's protocol
and needs nothing else from the server: it works against ``presence serve`` and
against the guide's own Node backend.

How it works (docs/listener.md says more):

- It connects with jittered exponential backoff, for as long as it takes. On every
  (re)connect it opens a coverage interval (``presence_coverage``), asks
  ``getOnlineUsers`` and reconciles the snapshot with the database (DESIGN
  "Semantics"): ``online`` rows for users the database missed, ``inferred``
  ``offline`` rows at the start of the gap for users who left unseen.
- Each ``userStatusChanged`` is a transition when the status changed and a
  sighting (``last_seen`` only) when it repeats. ``occurred_at`` follows DESIGN
  "Clock". Bad events are logged and counted, never written.
- Socket handlers only note what arrived; a separate writer task handles it in
  order, in batches (parse, decide), and commits them with
  :func:`presence_core.database.storage.write_batch` (idempotent) at least every 200 ms,
  so a slow database never stalls receiving. When the database is down, or the
  bounded queue is full, records go to an append-only spool
  (:mod:`presence_core.listener.spool`) and are replayed, in order, when the database
  answers again.
- Its heartbeat row in ``presence_listeners`` is refreshed every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import socketio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError

from presence_core.database import tables
from presence_core.database.records import (
    CoverageMark,
    DatabaseDown,
    Record,
    first_line,
    is_connection_error,
    record_from_dict,
    record_to_dict,
    write_records,
)
from presence_core.database.storage import OFFLINE, Sighting, Transition, current_state
from presence_core.listener.spool import Spool
from presence_core.listener.writer import ProcessWriter, WriterLost
from presence_core.protocol import (
    OnlineUser,
    ProtocolError,
    parse_online_users,
    parse_status_changed,
)

log = logging.getLogger("presence.listener")

CLOCK_AHEAD_LIMIT = timedelta(seconds=5)  # DESIGN "Clock"
CLOCK_BEHIND_LIMIT = timedelta(days=1)  # a lastSeen older than this is not believed either
TICK = timedelta(microseconds=1)  # keeps a user's rows strictly ordered in time
MAX_REASON = 64
MAX_NAME = 256
WRITERS = ("process", "thread")  # where batches are written: a child process, or a thread
WRITER_RETRIES = 3  # writer processes lost in a row before writing moves to a thread
MAX_ID = 256  # characters of a userId (storage.user_id_text)
MAX_LOGGED_PAYLOAD = 200


# --- database access (all of the listener's other SQL) ----------------------------------


def close_dangling_coverage(engine: Engine, listener: str, now: datetime) -> datetime | None:
    """Close the intervals a killed listener of this name left open, at its last
    heartbeat (the moment up to which everything it received was durable), and
    return the end of its latest interval: the start of the gap to reconcile.
    None when this listener has never run."""
    cov, hb = tables.coverage, tables.listeners
    with engine.begin() as conn:
        heartbeat = conn.execute(
            select(hb.c.heartbeat_at).where(hb.c.listener == listener)
        ).scalar_one_or_none()
        dangling = conn.execute(
            select(cov.c.id, cov.c.started_at).where(
                cov.c.listener == listener, cov.c.ended_at.is_(None)
            )
        ).all()
        for row in dangling:
            end = row.started_at
            if heartbeat is not None and heartbeat > end:
                end = min(heartbeat, now)
            conn.execute(update(cov).where(cov.c.id == row.id).values(ended_at=end))
            log.info(
                "event=coverage_closed_after_crash listener=%s started_at=%s ended_at=%s",
                listener,
                row.started_at.isoformat(),
                end.isoformat(),
            )
        return conn.execute(
            select(func.max(cov.c.ended_at)).where(cov.c.listener == listener)
        ).scalar_one_or_none()


@dataclass(frozen=True)
class Heartbeat:
    """The listener's row in ``presence_listeners``."""

    listener: str
    server_url: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    connected: bool
    last_event_at: datetime | None
    events_received: int
    transitions_written: int
    stopped_at: datetime | None = None


def write_heartbeat(engine: Engine, beat: Heartbeat) -> None:
    """Upsert the listener's heartbeat row."""
    values = {name: getattr(beat, name) for name in beat.__dataclass_fields__}
    stmt = pg_insert(tables.listeners).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[tables.listeners.c.listener],
        set_={k: stmt.excluded[k] for k in values if k != "listener"},
    )
    with engine.begin() as conn:
        conn.execute(stmt)


# --- pure decisions --------------------------------------------------------------------


@dataclass
class UserView:
    """What the listener believes about a user: status, since when, last sign of life."""

    status: str
    since: datetime | None
    last_seen: datetime | None


def event_time(
    last_seen: datetime | None, problem: str | None, received_at: datetime
) -> tuple[datetime, str | None]:
    """DESIGN "Clock": the event's ``lastSeen``, unless it is missing, unparseable,
    more than 5 s ahead of ``received_at`` (or more than a day behind it); then
    ``received_at``, with a note for the row's ``reason``."""
    if last_seen is None:
        return received_at, f"clock: lastSeen {problem or 'missing'}, received_at used"
    ahead = last_seen - received_at
    if ahead > CLOCK_AHEAD_LIMIT:
        return received_at, f"clock: lastSeen {ahead.total_seconds():.1f} s ahead, received_at used"
    if -ahead > CLOCK_BEHIND_LIMIT:
        return received_at, "clock: lastSeen over a day old, received_at used"
    return last_seen, None


def _after(view: UserView | None, at: datetime) -> datetime:
    """``at``, moved just after the user's current status began if it is not later."""
    if view is not None and view.since is not None and at <= view.since:
        return view.since + TICK
    return at


def plan_reconcile(
    state: Mapping[str, UserView],
    snapshot: Iterable[OnlineUser],
    *,
    gap_start: datetime | None,
    reconnect_at: datetime,
    received_at: datetime,
    source: str | None = None,
) -> list[Transition | Sighting]:
    """The rows that bring ``state`` in line with a server's ``onlineUsersList``.

    - A user in the snapshot whose status differs gets a row with the snapshot's
      status at its ``statusSince`` (our server's extension) or else its
      ``lastSeen``, when that falls inside the gap (after ``gap_start``, at most 5 s
      after ``reconnect_at``), else at ``reconnect_at``.
    - A present user absent from the snapshot gets an ``inferred`` ``offline`` row at
      ``gap_start`` (never overstate presence); with no earlier coverage at all, at
      the user's last sign of life.
    - Users whose status agrees get a sighting (names, ``last_seen``).

    Rows are kept after the user's current ``status_since``.
    """
    rows: list[Transition | Sighting] = []
    seen: set[str] = set()
    for user in snapshot:
        if user.user_id in seen:
            continue
        seen.add(user.user_id)
        view = state.get(user.user_id)
        names = {"user_type": user.user_type, "user_name": user.user_name, "team": user.team}
        if (view.status if view else OFFLINE) == user.status:
            rows.append(Sighting(user.user_id, received_at, **names))
            continue
        # when the status began: our server says so (statusSince); the guide's servers
        # send lastSeen, which for them is the moment the user came online
        at, reason = getattr(user, "status_since", None) or user.last_seen, "reconcile"
        if at is None:
            at, reason = reconnect_at, f"reconcile: lastSeen {user.last_seen_problem}"
        elif gap_start is not None and at < gap_start:
            at, reason = reconnect_at, "reconcile: lastSeen before the gap, reconnect time used"
        elif at > reconnect_at + CLOCK_AHEAD_LIMIT:
            at, reason = reconnect_at, "reconcile: lastSeen ahead, reconnect time used"
        rows.append(
            Transition(
                user.user_id,
                user.status,
                _after(view, at),
                received_at,
                inferred=False,
                reason=reason,
                source=source,
                **names,
            )
        )
    for user_id, view in state.items():
        if view.status == OFFLINE or user_id in seen:
            continue
        if gap_start is not None:
            at, reason = gap_start, "reconcile: absent from onlineUsersList"
        else:
            at = min(view.last_seen or view.since or reconnect_at, reconnect_at)
            reason = "reconcile: absent from onlineUsersList, no earlier coverage"
        rows.append(
            Transition(
                user_id,
                OFFLINE,
                _after(view, at),
                received_at,
                inferred=True,
                reason=reason,
                source=source,
            )
        )
    return rows


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter in [cap/2, cap] once capped: the delay
    before attempt ``attempt`` (1 for the first retry)."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 20))
    return random.uniform(ceiling / 2, ceiling)


def _clean_text(value: object, limit: int = MAX_NAME) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()[:limit]
    return text or None


_NO_NAMES = (None, None, None)


def _payload_names(payload: Mapping) -> tuple[str | None, str | None, str | None]:
    """(user_type, user_name, team) as a payload carries them, cleaned."""
    if "userName" not in payload and "userType" not in payload and "team" not in payload:
        return _NO_NAMES  # the guide's userStatusChanged carries none
    return (
        _clean_text(payload.get("userType")),
        _clean_text(payload.get("userName")),
        _clean_text(payload.get("team")),
    )


def _short(payload: object) -> str:
    text = repr(payload)
    return text if len(text) <= MAX_LOGGED_PAYLOAD else text[: MAX_LOGGED_PAYLOAD - 3] + "..."


def _now() -> datetime:
    return datetime.now(UTC)


# --- statistics and metrics ------------------------------------------------------------


@dataclass
class Stats:
    """Counters of one listener (read by tests, the heartbeat and Prometheus)."""

    events_received: int = 0
    transitions_written: int = 0
    sightings_queued: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    reconciles: int = 0
    db_errors: int = 0
    writers_lost: int = 0
    last_event_at: datetime | None = None
    connected: bool = False


class _Collector:
    """Prometheus view of a listener, computed when scraped."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def collect(self):
        lst, st = self.listener, self.listener.stats
        labels = ["listener"]
        name = [lst.name]

        def counter(metric: str, doc: str, value: float):
            family = CounterMetricFamily(f"presence_listener_{metric}", doc, labels=labels)
            family.add_metric(name, value)
            return family

        def gauge(metric: str, doc: str, value: float):
            family = GaugeMetricFamily(f"presence_listener_{metric}", doc, labels=labels)
            family.add_metric(name, value)
            return family

        yield counter("events_received", "userStatusChanged events received", st.events_received)
        yield counter(
            "transitions_written", "transition rows inserted (new)", st.transitions_written
        )
        yield counter("spooled", "records appended to the spool", st.spooled)
        yield counter("replayed", "spooled records replayed into the database", st.replayed)
        yield counter("rejected", "bad events and refused rows, never written", st.rejected)
        yield counter("reconnects", "connections to the server after the first", st.reconnects)
        yield counter("db_errors", "failed attempts to reach the database", st.db_errors)
        yield counter("writers_lost", "writer processes that died", st.writers_lost)
        yield counter("connect_failures", "failed attempts to connect", st.connect_failures)
        age = (_now() - st.last_event_at).total_seconds() if st.last_event_at else float("nan")
        yield gauge("last_event_age_seconds", "seconds since the last event", age)
        yield gauge("queue_depth", "records waiting for the writer", len(lst._queue))
        yield gauge("spool_bytes", "bytes in the spool", lst.spool.size_bytes())
        yield gauge("connected", "1 while connected to the server", 1 if st.connected else 0)


# --- the listener ----------------------------------------------------------------------


# What waits for the writer: (received_at, record). A plain tuple, made once per event.
_Pending = tuple[datetime, Record]

# At most this many distinct status names are remembered as already checked.
MAX_KNOWN_STATUSES = 64


@dataclass
class Listener:
    """A listener on one server, writing into ``engine``'s database.

    ``await listener.run()`` runs until :meth:`stop`; it returns after flushing
    and closing the coverage interval. Usable in-process (tests, the demo) and by
    ``presence listen``. ``on_written``, when given, is called on the event loop
    with each batch of records just committed (benchmarks time commits with it).
    ``writer`` is where batches are committed: ``"process"`` (a child process, see
    :mod:`presence_core.listener.writer`; the default) or ``"thread"`` (a worker thread of
    this process: one process less, but writing then slows receiving).
    ``connect_args`` are the writer process's connection options, as given to
    the engine (an engine cannot tell them back); None means the defaults.
    """

    engine: Engine
    server_url: str
    name: str | None = None
    token: str | None = None
    spool_dir: Path | str | None = None
    flush_interval: float = 0.2
    linger: float = 0.02
    max_batch: int = 5000
    queue_size: int = 100_000
    heartbeat_interval: float = 2.0
    names_interval: float = 1.0
    reconcile_timeout: float = 5.0
    retry_cap: float = 5.0
    db_retry: float = 1.0
    transports: list[str] | None = None
    writer: str = "process"
    connect_args: dict | None = None
    on_written: Callable[[Sequence[Record]], None] | None = None
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.name = self.name or default_name(self.server_url)
        home = Path(os.environ.get("PRESENCE_HOME") or "~/.local/share/presence-analytics")
        directory = self.spool_dir or home.expanduser() / "spool" / _slug(self.name)
        self.spool = Spool(directory)
        self._queue: deque[_Pending] = deque()
        self._inbox: deque[tuple[str, datetime, object]] = deque()
        self._state: dict[str, UserView] = {}
        self._statuses: set[str] = set()  # status names seen valid, exactly as sent
        self._named: set[str] = set()
        self._requests: deque[str] = deque()
        self._spooling = False
        self._reconciling = False
        self._reconciled = False
        self._gap_start: datetime | None = None
        self._connected_at: datetime | None = None
        self._inflight: list[_Pending] | None = None
        self._want_names = False
        self._closing = False
        self._started_at = _now()
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._beat_soon: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sio: socketio.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self.ready = asyncio.Event()  # set once the database state is loaded
        if self.writer not in WRITERS:
            raise ValueError(f"writer must be one of {', '.join(WRITERS)}, not {self.writer!r}")
        self._process_writer: ProcessWriter | None = None  # made by run()
        self._writers_lost_in_a_row = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    # -- public ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`: connect, reconcile, log; flush and close on the way out."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._beat_soon = asyncio.Event()
        self._started_at = _now()
        if self.writer == "process":
            url = self.engine.url.render_as_string(hide_password=False)
            self._process_writer = ProcessWriter(url, self.connect_args)
        if not await self._prepare():
            return
        self.ready.set()
        writer = asyncio.create_task(self._writer_loop(), name="listener-writer")
        side = [
            asyncio.create_task(self._heartbeat_loop(), name="listener-heartbeat"),
            asyncio.create_task(self._names_loop(), name="listener-names"),
        ]
        try:
            await self._connection_loop()
        finally:
            await self._shutdown(writer, side)

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from any thread and from signal handlers)."""
        if self._loop is None or self._stop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._stop.set()
        else:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def spooling(self) -> bool:
        return self._spooling

    def view(self, user_id: str) -> UserView | None:
        """What the listener believes about ``user_id`` now."""
        return self._state.get(user_id)

    # -- start-up ----------------------------------------------------------------------

    async def _prepare(self) -> bool:
        """Replay a spool left by a previous run, close its coverage, load the state.
        Waits (with backoff) for the database; False when stopped meanwhile."""
        attempt = 0
        while not self._stop.is_set():
            try:
                self._gap_start = await asyncio.to_thread(self._prepare_db)
                log.info(
                    "event=started listener=%s server=%s users=%d gap_start=%s spool=%s",
                    self.name,
                    self.server_url,
                    len(self._state),
                    self._gap_start.isoformat() if self._gap_start else "none",
                    self.spool.directory,
                )
                return True
            except DatabaseDown as exc:
                attempt += 1
                self.stats.db_errors += 1
                delay = backoff_delay(attempt, cap=self.retry_cap)
                log.warning("event=database_unavailable error=%r retry_in=%.1f", str(exc), delay)
                await self._sleep(delay)
        return False

    def _prepare_db(self) -> datetime | None:
        try:
            self.spool.rotate()
            replayed = self.spool.replay(self._write_dicts)
            if replayed:
                self.stats.replayed += replayed
                log.info("event=spool_replayed_at_start records=%d", replayed)
            gap = close_dangling_coverage(self.engine, self.name, _now())
            self._load_state(current_state(self.engine))
            write_heartbeat(self.engine, self._heartbeat(connected=False))
            return gap
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            if is_connection_error(exc):
                raise DatabaseDown(first_line(exc)) from None
            raise

    def _load_state(self, rows: Mapping) -> None:
        self._state = {
            uid: UserView(row.status, row.status_since, row.last_seen) for uid, row in rows.items()
        }
        self._named = {uid for uid, row in rows.items() if row.user_name}

    # -- the connection ----------------------------------------------------------------

    async def _connection_loop(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            lost = asyncio.Event()
            sio = self._client(lost)
            try:
                await sio.connect(
                    self.server_url,
                    auth={"token": self.token} if self.token else None,
                    transports=self.transports,
                    wait_timeout=5,
                )
            except Exception as exc:  # refused, unreachable, bad URL or token, timeouts
                attempt += 1
                self.stats.connect_failures += 1
                delay = backoff_delay(attempt, cap=self.retry_cap)
                log.warning(
                    "event=connect_failed server=%s attempt=%d error=%r retry_in=%.2f",
                    self.server_url,
                    attempt,
                    str(exc),
                    delay,
                )
                with contextlib.suppress(Exception):
                    await sio.disconnect()
                await self._sleep(delay)
                continue
            if not first:
                self.stats.reconnects += 1
            first, attempt = False, 0
            self._sio = sio
            stop_wait = asyncio.create_task(self._stop.wait())
            lost_wait = asyncio.create_task(lost.wait())
            await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            lost_wait.cancel()
            if self._stop.is_set():
                with contextlib.suppress(Exception):
                    await sio.disconnect()
            await asyncio.sleep(0)  # let queued message tasks and the disconnect run
            self._sio = None
            if not self._stop.is_set():
                await self._sleep(backoff_delay(1, cap=self.retry_cap))

    def _client(self, lost: asyncio.Event) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(
            reconnection=False, logger=False, engineio_logger=False, handle_sigint=False
        )
        loop = self._loop

        def on_connect():
            self._arrive("connected", sio)

        heard = self._watch_packets(sio)

        def on_disconnect(*_reason):
            at = _now()
            # A connection that died silently (no packet, not even the server's ping,
            # for well over a ping interval) was lost when last heard from, not when
            # the timeout noticed it: never overstate presence.
            interval = getattr(sio.eio, "ping_interval", None) or 25.0
            silent = time.monotonic() - heard[0]
            if heard[0] and silent > 1.5 * interval:
                at -= timedelta(seconds=silent)
            lost.set()
            # after the message tasks already scheduled, so no event overtakes it
            loop.call_soon(self._arrive, "disconnected", None, at)

        def on_status_changed(*args):
            at = _now()
            self.stats.events_received += 1
            self.stats.last_event_at = at
            self._arrive("event", args, at)

        def on_online_users(*args):
            self._arrive("snapshot", args)

        sio.on("connect", on_connect)
        sio.on("disconnect", on_disconnect)
        sio.on("userStatusChanged", on_status_changed)
        sio.on("onlineUsersList", on_online_users)
        return sio

    @staticmethod
    def _watch_packets(sio: socketio.AsyncClient) -> list[float]:
        """Note the monotonic time of every packet received (pings included) in the
        returned one-item list; python-engineio offers no hook, so its packet handler
        is wrapped (when it has the expected name; otherwise nothing is noted)."""
        heard = [0.0]
        original = getattr(sio.eio, "_receive_packet", None)
        if original is None:
            return heard

        async def receive(pkt):
            heard[0] = time.monotonic()
            return await original(pkt)

        sio.eio._receive_packet = receive
        return heard

    def _arrive(self, kind: str, payload: object, at: datetime | None = None) -> None:
        """Take what the socket delivered. Events are only queued here: the writer task
        handles them in batches (much cheaper than one by one between socket reads);
        anything else is handled at once, after the events before it."""
        self._inbox.append((kind, at or _now(), payload))
        if kind != "event" or len(self._inbox) >= self.max_batch:
            self._pump()  # (a long write must not let the inbox grow past the bounded queue)
            self._wake.set()
        elif len(self._inbox) == 1:
            self._wake.set()

    def _pump(self) -> None:
        """Handle what arrived, in order; stops while a reconcile awaits the database."""
        while self._inbox and not self._reconciling:
            kind, at, payload = self._inbox.popleft()
            if kind == "event":
                self._on_status_changed(payload, at)
            elif kind == "snapshot":
                self._on_snapshot(payload, at)
            elif kind == "connected":
                self._on_connected(at, payload)
            elif kind == "disconnected":
                self._on_disconnected(at)

    def _on_connected(self, at: datetime, sio: socketio.AsyncClient) -> None:
        self.stats.connected = True
        self._connected_at = at
        self._enqueue(CoverageMark(self.name, at), at)
        self._requests.clear()
        self._requests.append("reconcile")
        self._beat_soon.set()
        log.info("event=connected listener=%s server=%s", self.name, self.server_url)
        self._spawn(self._ask_online_users(sio))

    def _on_disconnected(self, at: datetime) -> None:
        if not self.stats.connected:
            return
        self.stats.connected = False
        self._enqueue(CoverageMark(self.name, self._connected_at, at), at)
        if self._reconciled:
            self._gap_start = at
            self._reconciled = False
        self._beat_soon.set()
        log.info("event=disconnected listener=%s server=%s", self.name, self.server_url)

    async def _ask_online_users(self, sio: socketio.AsyncClient | None) -> None:
        try:
            if sio is not None:
                await sio.emit("getOnlineUsers")
        except Exception as exc:  # a connection lost meanwhile; the next connect asks again
            log.info("event=ask_online_users_failed error=%r", str(exc))

    # -- events ------------------------------------------------------------------------

    def _reject(self, what: str, error: str, payload: object) -> None:
        self.stats.rejected += 1
        if self.stats.rejected <= 100 or self.stats.rejected % 1000 == 0:
            log.warning(
                "event=rejected what=%s error=%r payload=%s total=%d",
                what,
                error,
                _short(payload),
                self.stats.rejected,
            )

    def _on_status_changed(self, args: object, received_at: datetime) -> None:
        try:
            self._handle_status_changed(args, received_at)
        except Exception as exc:  # a bug must cost one event, never the listener
            log.exception("event=handler_failed")
            self._reject("userStatusChanged", f"internal error: {exc!r}", args)

    def _handle_status_changed(self, args: object, received_at: datetime) -> None:
        payload = args[0] if type(args) is tuple and len(args) == 1 else args
        quick = self._quick_change(payload)
        if quick is not None:
            uid, status, last_seen = quick
            occurred, note = event_time(last_seen, None, received_at)
        else:
            try:
                change = parse_status_changed(payload)
                if "\x00" in change.user_id:
                    raise ProtocolError("userStatusChanged: userId contains a NUL character")
            except ProtocolError as exc:
                self._reject("userStatusChanged", str(exc), payload)
                return
            uid, status = change.user_id, change.status
            occurred, note = event_time(change.last_seen, change.last_seen_problem, received_at)
            if payload.get("status") == status and len(self._statuses) < MAX_KNOWN_STATUSES:
                self._statuses.add(status)
        names = _payload_names(payload)
        if names[1]:
            self._named.add(uid)
        view = self._state.get(uid)
        if (view.status if view else OFFLINE) == status:
            if view is not None and (view.last_seen is None or occurred > view.last_seen):
                view.last_seen = occurred
            self.stats.sightings_queued += 1
            self._enqueue(Sighting(uid, occurred, *names), received_at)
            return
        reason = _clean_text(payload.get("reason"), MAX_REASON) if "reason" in payload else None
        at = _after(view, occurred)
        if at != occurred:
            note = "; ".join(filter(None, [note, "moved after the previous transition"]))
        if note:
            reason = "; ".join(filter(None, [reason, note]))
        self._state[uid] = UserView(status, at, at)
        self._enqueue(
            Transition(uid, status, at, received_at, False, reason, self.name, *names),
            received_at,
        )
        if status != OFFLINE and uid not in self._named:
            self._named.add(uid)  # asked once: a server that has no name will not get asked again
            self._want_names = True

    def _quick_change(self, payload: object) -> tuple[str, str, datetime] | None:
        """(user id, status, lastSeen) of the common well-formed event, checked in a
        few cheap steps: a user already known, a status already seen valid, an ISO
        ``lastSeen`` in UTC. None sends the event through the full parser, which
        gives the same answer for these and explains everything else."""
        if type(payload) is not dict:
            return None
        uid = payload.get("userId")
        if type(uid) is int:
            uid = str(uid)
            if len(uid) > MAX_ID:
                return None
        elif type(uid) is not str or uid not in self._state:
            return None
        status = payload.get("status")
        raw = payload.get("lastSeen")
        if type(status) is not str or status not in self._statuses:
            return None
        if type(raw) is not str or len(raw) > 64:
            return None
        try:
            last_seen = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if last_seen.tzinfo is not UTC:
            return None
        return uid, status, last_seen

    def _on_snapshot(self, args: object, received_at: datetime) -> None:
        payload = args[0] if isinstance(args, tuple) and len(args) == 1 else args
        purpose = self._requests.popleft() if self._requests else "names"
        if not isinstance(payload, list):
            self._reject("onlineUsersList", "not an array", payload)
            return
        users: list[OnlineUser] = []
        for entry in payload:
            try:
                user = parse_online_users([entry])[0]
                if "\x00" in user.user_id:
                    raise ProtocolError("onlineUsersList: userId contains a NUL character")
                users.append(user)
            except ProtocolError as exc:
                self._reject("onlineUsersList", str(exc), entry)
        if purpose == "reconcile":
            self._reconciling = True
            self._spawn(self._reconcile(users, received_at))
            return
        for user in users:  # a names refresh: only names and signs of life
            if user.user_name:
                self._named.add(user.user_id)
            view = self._state.get(user.user_id)
            if view is not None and view.status == user.status:
                self._enqueue(
                    Sighting(user.user_id, received_at, user.user_type, user.user_name, user.team),
                    received_at,
                )

    async def _reconcile(self, users: list[OnlineUser], received_at: datetime) -> None:
        try:
            fresh = await self._database_state()
            if fresh is not None:
                self._load_state(fresh)
            else:
                log.warning("event=reconcile_from_memory reason=database_unavailable")
            rows = plan_reconcile(
                self._state,
                users,
                gap_start=self._gap_start,
                reconnect_at=self._connected_at or received_at,
                received_at=received_at,
                source=self.name,
            )
            changed = 0
            for row in rows:
                if isinstance(row, Transition):
                    changed += 1
                    self._state[row.user_id] = UserView(
                        row.status, row.occurred_at, row.occurred_at
                    )
                if row.user_name:
                    self._named.add(row.user_id)
                self._enqueue(row, received_at)
            self._reconciled = True
            self.stats.reconciles += 1
            log.info(
                "event=reconciled listener=%s online=%d transitions=%d gap_start=%s",
                self.name,
                len(users),
                changed,
                self._gap_start.isoformat() if self._gap_start else "none",
            )
        except Exception:
            log.exception("event=reconcile_failed")
        finally:
            self._reconciling = False
            self._pump()

    async def _database_state(self) -> Mapping | None:
        """The database's current state once everything queued is committed; None
        when the database is down or too slow (the caller then trusts memory)."""
        deadline = time.monotonic() + self.reconcile_timeout
        self._wake.set()
        while self._queue or self._inflight is not None or self._spooling:
            if self._spooling:
                return None  # down (or behind): memory is the database plus the spool
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(current_state, self.engine),
                max(0.1, deadline - time.monotonic()),
            )
        except (SQLAlchemyError, psycopg.Error, OSError, TimeoutError) as exc:
            self.stats.db_errors += 1
            log.warning("event=state_read_failed error=%r", first_line(exc))
            return None

    # -- the writer --------------------------------------------------------------------

    def _enqueue(self, record: Record, received_at: datetime) -> None:
        item = (received_at, record)
        if self._spooling:
            self._spool([item])
            return
        if len(self._queue) >= self.queue_size:
            log.warning("event=queue_full depth=%d action=spool", len(self._queue))
            items = [*self._queue, item]
            self._queue.clear()
            self._spooling = True
            self._spool(items)
            return
        self._queue.append(item)
        if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
            self._wake.set()

    def _spool(self, items: Sequence[_Pending]) -> None:
        self.stats.spooled += self.spool.append(record_to_dict(record) for _, record in items)

    def _take(self) -> list[_Pending]:
        n = min(len(self._queue), self.max_batch)
        return [self._queue.popleft() for _ in range(n)]

    async def _writer_loop(self) -> None:
        next_replay = 0.0
        while True:
            waiting = len(self._queue) + (0 if self._reconciling else len(self._inbox))
            if not waiting and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                waiting = len(self._queue) + (0 if self._reconciling else len(self._inbox))
            if 0 < waiting < self.max_batch and not self._closing and self.linger > 0:
                await asyncio.sleep(self.linger)  # gather a batch: one commit for many events
            self._pump()
            batch = self._take()
            if self._spooling:
                if batch:
                    self._spool(batch)
                if time.monotonic() >= next_replay or self._closing:  # closing: one last try
                    if await self._replay():
                        continue
                    next_replay = time.monotonic() + self.db_retry
                if self._closing and not self._queue:
                    self.spool.sync()
                    log.warning("event=stopped_with_spool records_kept_in=%s", self.spool.directory)
                    return
                continue
            if batch:
                self._inflight = batch
                try:
                    records = [record for _, record in batch]
                    if self._process_writer is not None:
                        inserted, refused = await self._process_writer.write(records)
                    else:
                        inserted, refused = await asyncio.to_thread(
                            write_records, self.engine, records
                        )
                    self.stats.transitions_written += inserted
                    self.stats.rejected += refused
                    self._writers_lost_in_a_row = 0
                    if self.on_written is not None:
                        self.on_written(records)
                except WriterLost as exc:  # the batch is spooled; the next one gets a new writer
                    self._writer_lost(exc, len(batch))
                    self._spooling = True
                    self._spool(batch)
                    next_replay = time.monotonic() + self.db_retry
                except Exception as exc:  # down, or anything unforeseen: keep it, retry later
                    self.stats.db_errors += 1
                    if not isinstance(exc, DatabaseDown):
                        log.exception("event=write_failed action=spool")
                    log.warning(
                        "event=database_down action=spool records=%d error=%r", len(batch), str(exc)
                    )
                    self._spooling = True
                    self._spool(batch)
                    next_replay = time.monotonic() + self.db_retry
                finally:
                    self._inflight = None
            if self._closing and not self._queue and not self._spooling:
                return

    def _writer_lost(self, exc: WriterLost, records: int) -> None:
        self.stats.writers_lost += 1
        self._writers_lost_in_a_row += 1
        log.warning("event=writer_lost action=spool records=%d error=%r", records, str(exc))
        if self._writers_lost_in_a_row >= WRITER_RETRIES:
            # a writer that cannot even start (a broken environment) must not stop the
            # logging: commit from a thread of this process instead, slower but working
            log.error(
                "event=writer_process_failing action=write_in_thread failures=%d",
                self._writers_lost_in_a_row,
            )
            self._process_writer = None

    async def _replay(self) -> bool:
        """Replay the spool into the database; True when it is empty and writing
        goes straight to the database again."""
        try:
            while True:
                self.spool.rotate()
                replayed = await asyncio.to_thread(self.spool.replay, self._write_dicts)
                self.stats.replayed += replayed
                if replayed:
                    log.info("event=spool_replayed records=%d", replayed)
                if not self.spool.segments():
                    self._spooling = False  # checked and set on the loop thread: no race
                    log.info("event=database_back spool=empty")
                    return True
        except Exception as exc:
            self.stats.db_errors += 1
            if not isinstance(exc, DatabaseDown):
                log.exception("event=replay_failed")
            log.debug("event=replay_failed error=%r", str(exc))
            return False

    def _write_dicts(self, dicts: list[dict]) -> None:
        """Write spooled records (runs in a worker thread); raises DatabaseDown."""
        records = []
        for data in dicts:
            try:
                records.append(record_from_dict(data))
            except (KeyError, ValueError, TypeError) as exc:
                self.stats.rejected += 1
                log.warning("event=spool_record_refused error=%r", str(exc))
        inserted, refused = write_records(self.engine, records)
        self.stats.transitions_written += inserted
        self.stats.rejected += refused

    # -- heartbeat, names, shutdown ------------------------------------------------------

    def _durable_until(self) -> datetime:
        """Everything received before this moment is committed or spooled."""
        candidates = [_now()]
        if self._queue:
            candidates.append(self._queue[0][0])
        if self._inflight:
            candidates.append(self._inflight[0][0])
        if self._inbox:
            candidates.append(self._inbox[0][1])
        return min(candidates)

    def _heartbeat(self, *, connected: bool, stopped: bool = False) -> Heartbeat:
        """The heartbeat row as of now (built on the event loop: it reads the queue)."""
        now = _now()
        return Heartbeat(
            listener=self.name,
            server_url=self.server_url,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            heartbeat_at=now if stopped else self._durable_until(),
            connected=connected,
            last_event_at=self.stats.last_event_at,
            events_received=self.stats.events_received,
            transitions_written=self.stats.transitions_written,
            stopped_at=now if stopped else None,
        )

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):  # a (dis)connect beats at once
                await asyncio.wait_for(self._beat_soon.wait(), self.heartbeat_interval)
            self._beat_soon.clear()
            if self._spooling or self._stop.is_set():
                continue  # the database is down; the spool replay will tell
            beat = self._heartbeat(connected=self.stats.connected)
            try:
                await asyncio.to_thread(write_heartbeat, self.engine, beat)
            except Exception as exc:  # never let the heartbeat die
                self.stats.db_errors += 1
                log.debug("event=heartbeat_failed error=%r", first_line(exc))

    async def _names_loop(self) -> None:
        """Ask for the online list when a user came online without a name, so names
        and types reach the database even from servers that send them only there."""
        while not self._stop.is_set():
            await self._sleep(self.names_interval)
            ready = self._sio is not None and self.stats.connected and not self._reconciling
            if self._want_names and ready and not self._requests:
                self._want_names = False
                self._requests.append("names")
                await self._ask_online_users(self._sio)

    async def _shutdown(self, writer: asyncio.Task, side: list[asyncio.Task]) -> None:
        for task in side:
            task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.reconcile_timeout + 1)
        self._reconciling = False
        self._pump()
        if self.stats.connected:
            self._on_disconnected(_now())
        self._closing = True
        self._wake.set()
        try:
            await writer
        finally:
            if self._process_writer is not None:
                await self._process_writer.close()
        self.spool.close()
        try:
            beat = self._heartbeat(connected=False, stopped=True)
            await asyncio.to_thread(write_heartbeat, self.engine, beat)
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            log.warning("event=final_heartbeat_failed error=%r", first_line(exc))
        log.info(
            "event=stopped listener=%s events=%d transitions=%d spooled=%d replayed=%d rejected=%d",
            self.name,
            self.stats.events_received,
            self.stats.transitions_written,
            self.stats.spooled,
            self.stats.replayed,
            self.stats.rejected,
        )

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def default_name(server_url: str) -> str:
    """The default listener name: this host and the server it listens to."""
    return f"{socket.gethostname()}:{re.sub(r'^https?://', '', server_url)}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "listener"


# --- the command -----------------------------------------------------------------------
