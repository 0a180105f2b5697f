"""Log every status transition a presence server announces into PostgreSQL, until stopped.

:class:`Listener` holds the connection (:mod:`~presence_core.listener.connection`)
and the orchestration; what each event means is the
:class:`~presence_core.listener.state.UserTracker`'s to say, and the
:class:`~presence_core.listener.pipeline.WritePipeline` commits the records (in
batches, spooled while the database is down). docs/listener.md says more.

On every (re)connect the listener opens a coverage interval (``presence_coverage``),
subscribes to everything (protocol version 2, where the server speaks it) and asks
``getOnlineUsers``, and reconciles the snapshot with the database (DESIGN
"Semantics"): a version-2 server's subscription acknowledgement is that snapshot
(and its ``presenceDiff`` frames carry the transitions; a ``seq`` that jumps means
one was missed: the coverage is cut there and the listener re-subscribes and
reconciles at once), otherwise the online list is (the guide's protocol). Its
heartbeat row in ``presence_listeners`` is refreshed every few seconds. Socket
handlers only note what arrived (the inbox); the pipeline's writer task has it
handled, in order and in bulk, before taking each batch, so a slow database never
stalls receiving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import socketio
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from presence_core import protocol
from presence_core.database.clock import DatabaseClock
from presence_core.database.coverage import close_dangling_coverage
from presence_core.database.records import (
    CoverageMark,
    Record,
    first_line,
    is_connection_error,
)
from presence_core.database.storage import Sighting, Transition, current_state
from presence_core.errors import DatabaseUnavailable
from presence_core.listener.connection import ServerConnection
from presence_core.listener.decisions import (
    UserView,
    backoff_delay,
    default_name,
    departures,
    parse_snapshot,
)
from presence_core.listener.heartbeat import HeartbeatKeeper
from presence_core.listener.metrics import Stats, listener_registry
from presence_core.listener.pipeline import WritePipeline, default_spool_dir
from presence_core.listener.spool import Spool
from presence_core.listener.state import UserTracker
from presence_core.protocol import DiffOrder, OnlineUser, ProtocolError, parse_online_users

log = logging.getLogger("presence.listener")

__all__ = ["Listener"]


# the fields handed to the write pipeline as they are
_PIPELINE_OPTIONS = "writer connect_args flush_interval linger max_batch queue_size db_retry"


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
    ``clock`` is what every time is read from (default: the database's, measured
    at start and every ``clock_interval`` seconds; DESIGN "Clock").
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
    clock: DatabaseClock | None = None
    clock_interval: float = 60.0

    def __post_init__(self) -> None:
        self.name = self.name or default_name(self.server_url)
        self.clock = self.clock or DatabaseClock(self.engine)
        self.spool = Spool(self.spool_dir or default_spool_dir(self.name))
        self.tracker = UserTracker()
        options = {name: getattr(self, name) for name in _PIPELINE_OPTIONS.split()}
        self.pipeline = WritePipeline(
            self.engine, self.spool, self.stats, intake=self, on_written=self.on_written, **options
        )
        self._inbox: deque[tuple[str, datetime, object]] = deque()
        self._requests: deque[str] = deque()  # what each getOnlineUsers asked for
        self._reconciling = False
        self._reconciled = False
        self._gap_start: datetime | None = None
        self._connected_at: datetime | None = None
        self._order = DiffOrder()  # presenceDiff seq (protocol version 2)
        self._last_sight: datetime | None = None  # the last diff known complete
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connection = ServerConnection(
            self.server_url,
            self._arrive,
            self.stats,
            now=self.now,
            token=self.token,
            transports=self.transports,
            retry_cap=self.retry_cap,
        )
        self._tasks: set[asyncio.Task] = set()
        self.heartbeat = HeartbeatKeeper(
            self.engine,
            self.name,
            self.server_url,
            self.stats,
            clock=self.clock,
            durable_until=self._durable_until,
            interval=self.heartbeat_interval,
            clock_interval=self.clock_interval,
        )
        self.ready = asyncio.Event()  # set once the database state is loaded
        self.registry = listener_registry(
            self.name,
            self.stats,
            now=self.now,
            queue_depth=lambda: self.pipeline.queue_depth,
            spool_bytes=self.spool.size_bytes,
        )

    # -- public ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`: connect, reconcile, log; flush and close on the way out."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.heartbeat.started_at = self.now()
        self.spool.claim()  # one listener per spool (and name): SpoolBusy otherwise
        if not await self._prepare():
            self.spool.close()
            return
        self.ready.set()
        self.pipeline.start()
        side = [
            asyncio.create_task(
                self.heartbeat.run(self._stop, lambda: self.pipeline.spooling),
                name="listener-heartbeat",
            ),
            asyncio.create_task(self._names_loop(), name="listener-names"),
        ]
        try:
            await self.connection.run(self._stop, self._sleep)
        finally:
            await self._shutdown(side)

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from any thread and from signal handlers)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def queue_depth(self) -> int:
        return self.pipeline.queue_depth

    @property
    def spooling(self) -> bool:
        return self.pipeline.spooling

    def now(self) -> datetime:
        """The database's time as this listener measures it: every time it records or
        judges is read here, never from the local clock."""
        return self.clock.now()

    def view(self, user_id: str) -> UserView | None:
        """What the listener believes about ``user_id`` now."""
        return self.tracker.view(user_id)

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
                    len(self.tracker),
                    self._gap_start.isoformat() if self._gap_start else "none",
                    self.spool.directory,
                )
                return True
            except DatabaseUnavailable as exc:
                attempt += 1
                self.stats.db_errors += 1
                delay = backoff_delay(attempt, cap=self.retry_cap)
                log.warning("event=database_unavailable error=%r retry_in=%.1f", str(exc), delay)
                await self._sleep(delay)
        return False

    def _prepare_db(self) -> datetime | None:
        try:
            self.heartbeat.measure_clock()
            replayed = self.pipeline.replay_now()
            if replayed:
                log.info("event=spool_replayed_at_start records=%d", replayed)
            gap = close_dangling_coverage(self.engine, self.name, self.now())
            self.tracker.load(current_state(self.engine))
            self.heartbeat.write(self.heartbeat.row(connected=False))
            return gap
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            if is_connection_error(exc):
                raise DatabaseUnavailable(first_line(exc)) from None
            raise

    # -- the connection ----------------------------------------------------------------

    def _arrive(self, kind: str, payload: object, at: datetime | None = None) -> None:
        """Take what the socket delivered. Events are only queued here: the writer task
        handles them in batches (much cheaper than one by one between socket reads);
        anything else is handled at once, after the events before it."""
        self._inbox.append((kind, at or self.now(), payload))
        if (kind != "event" and kind != "diff") or len(self._inbox) >= self.max_batch:
            self.pump()  # (a long write must not let the inbox grow past the bounded queue)
            self.pipeline.wake()
        elif len(self._inbox) == 1:
            self.pipeline.wake()

    def waiting(self) -> int:
        """What arrived and is not handled yet (the pipeline's :class:`Intake`)."""
        return 0 if self._reconciling else len(self._inbox)

    def pump(self) -> None:
        """Handle what arrived, in order; stops while a reconcile awaits the database."""
        while self._inbox and not self._reconciling:
            kind, at, payload = self._inbox.popleft()
            if kind == "event":
                self._on_status_changed(payload, at)
            elif kind == "diff":
                self._on_diff(payload, at)
            elif kind == "subscribed":
                self._on_subscribed(payload, at)
            elif kind == "snapshot":
                self._on_snapshot(payload, at)
            elif kind == "connected":
                self._on_connected(at, payload)
            elif kind == "disconnected":
                self._on_disconnected(at)

    def _on_connected(self, at: datetime, sio: socketio.AsyncClient) -> None:
        self.stats.connected = True
        self._connected_at = at
        self.pipeline.enqueue(CoverageMark(self.name, at), at)
        self._requests.clear()
        self._requests.append("reconcile")
        self.heartbeat.soon()
        log.info("event=connected listener=%s server=%s", self.name, self.server_url)
        self._spawn(self.connection.watch(sio))

    def _on_disconnected(self, at: datetime) -> None:
        if not self.stats.connected:
            return
        self.stats.connected = False
        self.pipeline.enqueue(CoverageMark(self.name, self._connected_at, at), at)
        if self._reconciled:
            self._gap_start = at
            self._reconciled = False
        self.heartbeat.soon()
        log.info("event=disconnected listener=%s server=%s", self.name, self.server_url)

    # -- events ------------------------------------------------------------------------

    def _on_status_changed(self, args: object, received_at: datetime) -> None:
        payload = args[0] if type(args) is tuple and len(args) == 1 else args
        dropped = self.tracker.names_dropped
        try:
            record = self.tracker.status_changed(payload, received_at, self.name)
        except ProtocolError as exc:
            self.stats.reject("userStatusChanged", str(exc), payload)
            return
        except Exception as exc:  # a bug must cost one event, never the listener
            log.exception("event=handler_failed")
            self.stats.reject("userStatusChanged", f"internal error: {exc!r}", args)
            return
        if self.tracker.names_dropped != dropped:
            self.stats.drop_names(
                "userStatusChanged", self.tracker.names_dropped - dropped, payload
            )
        if type(record) is Sighting:
            self.stats.sightings_queued += 1
        self.pipeline.enqueue(record, received_at)

    def _on_diff(self, args: object, received_at: datetime) -> None:
        """A ``presenceDiff``: its changes, in order, as so many ``userStatusChanged``;
        a jump in ``seq`` then cuts the coverage and re-subscribes (reconcile at once)."""
        payload = args[0] if type(args) is tuple and len(args) == 1 else args
        try:
            seq = protocol.parse_presence_diff(payload).seq
        except ProtocolError as exc:
            self.stats.reject(protocol.PRESENCE_DIFF, str(exc), payload)
            return
        verdict = self._order.check(seq)
        changes = payload["changes"]
        self.stats.events_received += len(changes)
        for change in changes:
            self._on_status_changed(change, received_at)
        if verdict == DiffOrder.NEXT:
            self._last_sight = received_at
        elif verdict == DiffOrder.GAP and self.stats.connected:
            self._on_gap(seq, received_at)

    def _on_gap(self, seq: int, at: datetime) -> None:
        """Diffs were missed: whatever happened since the last complete one was not seen.
        The coverage interval ends there, a new one starts now, and the re-subscription's
        snapshot is reconciled with the gap starting at the last diff known complete."""
        self.stats.diff_gaps += 1
        lost_at = self._last_sight or self._connected_at or at
        log.warning(
            "event=diff_gap listener=%s expected_seq=%d got_seq=%d since=%s",
            self.name,
            self._order.seq + 1,
            seq,
            lost_at.isoformat(),
        )
        if self._connected_at is not None:
            self.pipeline.enqueue(CoverageMark(self.name, self._connected_at, lost_at), at)
        self.pipeline.enqueue(CoverageMark(self.name, at), at)
        self._connected_at = at
        self._gap_start = lost_at
        self._reconciled = False
        self._order.reset(seq)  # until the acknowledgement gives the new base
        self._spawn(self.connection.subscribe())

    def _on_subscribed(self, args: object, received_at: datetime) -> None:
        """The acknowledgement of ``subscribe {all: true}``: the server speaks version 2;
        its users are the snapshot to reconcile, and the online list asked with it is
        not needed. A refusal: reconnect speaking the guide's protocol."""
        payload = args[0] if isinstance(args, tuple) and len(args) == 1 else args
        try:
            seq, _users = protocol.parse_subscribe_ack(payload)
        except ProtocolError as exc:
            self.stats.reject(protocol.SUBSCRIBE, str(exc), payload)
            log.warning(
                "event=subscribe_refused error=%r (reconnecting with the guide's protocol)",
                str(exc),
            )
            self.connection.protocol = 1
            self._spawn(self.connection.drop())
            return
        self.stats.protocol = protocol.PROTOCOL_V2
        self._order.reset(seq)
        self._last_sight = received_at
        if self._requests and self._requests[0] == "reconcile":
            self._requests[0] = "ignore"  # the online list asked with the subscription
        entries = [
            u
            for u in payload["users"]
            if not (isinstance(u, dict) and u.get("status") == protocol.OFFLINE)
        ]
        self._snapshot(entries, "reconcile", received_at)

    def _on_snapshot(self, args: object, received_at: datetime) -> None:
        payload = args[0] if isinstance(args, tuple) and len(args) == 1 else args
        purpose = self._requests.popleft() if self._requests else "names"
        if purpose == "ignore":
            return
        if purpose == "reconcile" and self.stats.protocol == 0:
            self.stats.protocol = 1  # answered without a subscription: the guide's protocol
        self._snapshot(payload, purpose, received_at)

    def _snapshot(self, payload: object, purpose: str, received_at: datetime) -> None:
        users, refused, dropped = parse_snapshot(payload)
        for error, entry in refused:
            self.stats.reject("onlineUsersList", error, entry)
        if dropped:
            self.stats.drop_names("onlineUsersList", dropped, payload)
        if not isinstance(payload, list):
            return
        if purpose == "reconcile":
            self._reconciling = True
            self._spawn(self._reconcile(users, received_at))
            return
        for sighting in self.tracker.names_seen(users, received_at):
            self.pipeline.enqueue(sighting, received_at)

    async def _reconcile(self, users: list[OnlineUser], received_at: datetime) -> None:
        try:
            # the database's state once everything queued is committed; None when it is
            # down or too slow: then memory (the database plus the spool) is trusted
            fresh = await self.pipeline.read_committed(current_state, self.reconcile_timeout)
            if fresh is not None:
                self.tracker.load(fresh)
            else:
                log.warning("event=reconcile_from_memory reason=database_unavailable")
            rows = self.tracker.reconcile(
                users,
                gap_start=self._gap_start,
                reconnect_at=self._connected_at or received_at,
                received_at=received_at,
                source=self.name,
                left=await self._departures(users),
            )
            for row in rows:
                self.pipeline.enqueue(row, received_at)
            self._reconciled = True
            self.stats.reconciles += 1
            log.info(
                "event=reconciled listener=%s online=%d transitions=%d gap_start=%s",
                self.name,
                len(users),
                sum(isinstance(row, Transition) for row in rows),
                self._gap_start.isoformat() if self._gap_start else "none",
            )
        except Exception:
            log.exception("event=reconcile_failed")
        finally:
            self._reconciling = False
            self.pump()

    async def _departures(self, users: list[OnlineUser]) -> dict[str, datetime]:
        """When the users believed present but absent from the online list left, as a
        version-2 server (ours) remembers it: asked with ``getUsersStatus``, so that
        the reconcile writes their offline at the moment the server stored, not an
        inferred one at the gap's start. {} from the guide's servers."""
        if self.stats.protocol != protocol.PROTOCOL_V2:
            return {}
        listed = {user.user_id for user in users}
        absent = [
            key
            for key, view in self.tracker.views.items()
            if view.status != protocol.OFFLINE and key not in listed
        ]
        if not absent:
            return {}
        answer = await self.connection.users_status(absent, self.reconcile_timeout)
        if answer is None:
            return {}
        return departures(parse_online_users(answer, skip_bad=True))

    # -- names, shutdown ------------------------------------------------------

    def _durable_until(self) -> datetime:
        """Everything received before this moment is committed or spooled."""
        candidates = [self.now(), self.pipeline.oldest_pending()]
        if self._inbox:
            candidates.append(self._inbox[0][1])
        return min(c for c in candidates if c is not None)

    async def _names_loop(self) -> None:
        """Ask for the online list when a user came online without a name, so names
        and types reach the database even from servers that send them only there."""
        while not self._stop.is_set():
            await self._sleep(self.names_interval)
            ready = self.connection.up and self.stats.connected and not self._reconciling
            if ready and not self._requests and self.tracker.take_names_wanted():
                self._requests.append("names")
                await self.connection.ask_online_users()

    async def _shutdown(self, side: list[asyncio.Task]) -> None:
        for task in side:
            task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.reconcile_timeout + 1)
        self._reconciling = False
        self.pump()
        if self.stats.connected:
            self._on_disconnected(self.now())
        await self.pipeline.close()
        try:
            beat = self.heartbeat.row(connected=False, stopped=True)
            await asyncio.to_thread(self.heartbeat.write, beat)
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
