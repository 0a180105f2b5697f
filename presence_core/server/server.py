"""The presence server: the guide's Socket.IO protocol, with what the guide's backend lacks.

Clients announce themselves with ``userOnline``; every change of a user's status
is broadcast to all clients as ``userStatusChanged``; ``getOnlineUsers`` answers
``onlineUsersList``. On top of the guide: several connections per user (the last
one to close takes the user offline), ``userHeartbeat`` with a silence timeout,
a grace period so that a page reload does not flap, statuses beyond online
(``userStatus``), refusal to act for another user, optional signed tokens, a
``presenceError`` for every bad event, and a shutdown that tells nobody a lie.

Times are the database's clock (:class:`~presence_core.database.clock.DatabaseClock`,
measured at start and every minute; this machine's own with no database), cut to
the millisecond, and each user's status changes are rate-limited, so a flood can
neither push a user's history into the future nor disagree with a listener
judging the same broadcasts by the same clock.

The state lives in memory, in one process; with ``redis_url`` the process is one
node of a cluster instead, whose state lives in Redis (:mod:`~presence_core.server.cluster`,
docs/cluster.md): the node then uses a :class:`~presence_core.server.cluster_state.ClusterState`
in place of the :class:`PresenceState`, with the same calls. ``presence_users`` (status,
last_seen, names) and ``presence_transitions`` (``source='server'``) are kept up
to date through the database writer, from a background thread, so a slow
database never delays the event loop. Timestamps are cut to milliseconds, the
wire's precision, so a listener logging the same broadcasts writes the same keys
and the database keeps one row per transition.

This module holds connections and protocol handling; who is present and each
transition is :mod:`~presence_core.server.state`, fan-out
:mod:`~presence_core.server.broadcast`, the HTTP side and uvicorn
:mod:`~presence_core.server.http`, the options :mod:`~presence_core.server.options`,
protocol version 2's events and diffs :mod:`~presence_core.server.watching`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime

import socketio
from sqlalchemy import Engine

from presence_core import protocol
from presence_core.database.clock import DatabaseClock
from presence_core.protocol import ProtocolError
from presence_core.server import auth
from presence_core.server.batching import FrameBatcher
from presence_core.server.broadcast import Broadcaster
from presence_core.server.cluster import Cluster
from presence_core.server.cluster_routing import default_node_id, route_tag, tag_session_ids
from presence_core.server.cluster_state import ClusterState
from presence_core.server.http import HealthApp, WebServer, WireLog
from presence_core.server.options import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    WATCH_POLICIES,
    ServerOptions,
)
from presence_core.server.ratelimit import ChangeLimiter
from presence_core.server.state import PresenceState, User
from presence_core.server.subscriptions import Subscriptions, Watcher
from presence_core.server.watching import Encoded, Refused, Watching
from presence_core.server.writer import DatabaseWriter, default_server_spool

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)  # one per connection: slots save 0.5 KiB each
class Conn:
    sid: str
    identity: auth.Identity | None = None
    key: str | None = None  # the user this connection announced
    wire_id: protocol.UserId | None = None
    last_life: datetime | None = None  # the last sign of life, by the server's clock
    last_life_mono: float = field(default_factory=time.monotonic)
    heartbeats: bool = False  # has sent userHeartbeat: the silence timeout applies
    stale: bool = False  # timed out; the next sign of life revives it
    watcher: Watcher | None = None  # protocol version 2: what it watches


class _TextPacket(socketio.packet.Packet):
    """Socket.IO packets of JSON only. The server never sends bytes, so the walk that
    python-socketio makes through every outgoing payload looking for them (a second
    of CPU for a thousand subscribe acknowledgements of 50 users each) is skipped;
    an acknowledgement already encoded (:class:`Encoded`, a ``subscribe`` answer)
    is sent as it is."""

    @classmethod
    def data_is_binary(cls, data: object) -> bool:
        return False

    def encode(self) -> str | list:
        data = self.data
        if (
            self.packet_type == socketio.packet.ACK
            and type(data) is list
            and len(data) == 1
            and type(data[0]) is Encoded
            and self.namespace in (None, "/")
        ):
            return f"{socketio.packet.ACK}{'' if self.id is None else self.id}[{data[0]}]"
        return super().encode()


class _Dispatcher(socketio.AsyncNamespace):
    """The default namespace, handing every event to one function."""

    def __init__(self, dispatch: Callable[..., Coroutine]) -> None:
        super().__init__("/")
        self._dispatch = dispatch

    async def trigger_event(self, event: str, *args: object) -> object:
        return await self._dispatch(event, *args)


class PresenceServer:
    """The Socket.IO presence server; ``asgi_app`` can be served by any ASGI server.

    ``engine`` None: no database at all. In tests: ``port = await server.start(host, 0)``,
    then ``await server.stop()``; the command line uses :meth:`serve`.
    """

    def __init__(self, engine: Engine | None = None, options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        if self.options.auth_secret is not None:
            auth.check_secret(self.options.auth_secret)
        if self.options.watch_policy not in WATCH_POLICIES:
            raise ValueError(f"watch_policy must be one of {WATCH_POLICIES}")
        self.engine = engine
        self.writer = (
            DatabaseWriter(engine, self.options.flush_interval) if engine is not None else None
        )
        self.wire = WireLog()
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            logger=self.wire.logger,
            engineio_logger=self.wire.logger,
            cors_allowed_origins=self.options.cors_origins,
            max_http_buffer_size=self.options.max_message_bytes,
            async_handlers=False,  # one client's events in order; handlers never block
            serializer=_TextPacket,
        )
        self.node_id: str | None = self.options.node_id  # host:port once listening, if None
        if self.options.redis_url is not None or self.options.node_id is not None:
            tag_session_ids(self.sio.eio, lambda: route_tag(self.node_id or "node"))
        self.asgi_app = socketio.ASGIApp(self.sio, other_asgi_app=HealthApp(self.health))
        self.web = WebServer(self.asgi_app, self.options, self.wire)
        self.clock = DatabaseClock(engine)
        self.limiter = ChangeLimiter(self.options.status_rate, self.options.status_burst)
        self.broadcaster = Broadcaster(self.sio)
        self.subscriptions = Subscriptions()
        self.watching = Watching(self)  # protocol version 2's events and diffs
        self.state: PresenceState | ClusterState = PresenceState(
            self._publish,
            self.writer,
            now=self._now,
            source=self.options.source,
            grace=self.options.grace,
        )
        self.cluster: Cluster | None = None
        if self.options.redis_url is not None:  # one node of a cluster (docs/cluster.md)
            self.cluster = Cluster(
                self.options,
                lambda: self.node_id or "node",
                self._now,
                self._publish,
                self.writer,
                self.watching.seq_jump,
            )
            self.state = self.cluster.state
        self.conns: dict[str, Conn] = {}
        self.closing = False
        self.stats = {"events": 0, "refused": 0}
        self.port: int | None = None
        self.loop_name: str | None = None  # the event loop's library, once started
        self._sweeper: asyncio.Task | None = None
        self._differ: asyncio.Task | None = None
        self._clock_task: asyncio.Task | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task] = set()
        self._register()

    # --- Socket.IO handlers -----------------------------------------------------------

    def _register(self) -> None:
        events: dict[str, Callable[[Conn, object], Coroutine]] = {
            protocol.USER_ONLINE: self._user_online,
            protocol.USER_OFFLINE: self._user_offline,
            protocol.USER_HEARTBEAT: self._user_heartbeat,
            protocol.USER_STATUS: self._user_status,
            protocol.GET_ONLINE_USERS: self._get_online_users,
            protocol.SUBSCRIBE: self.watching.subscribe,
            protocol.UNSUBSCRIBE: self.watching.unsubscribe,
            protocol.GET_USERS_STATUS: self.watching.get_users_status,
        }
        self._handlers = {name: self._wrap(name, handler) for name, handler in events.items()}
        # One dispatcher for everything (a namespace's documented trigger_event hook):
        # python-socketio's own routing would let a client call the connect or
        # disconnect handler by sending an ordinary event of that name, and would call
        # a catch-all handler with different arguments for an event named "*".
        self.sio.register_namespace(_Dispatcher(self._dispatch))

    async def _dispatch(self, event: object, sid: str, *args: object) -> object:
        if event in ("connect", "disconnect"):
            if self.sio.manager.is_connected(sid, "/"):  # a client's event, not the real one
                return await self._refuse(sid, str(event), f"{event!r} is a reserved event")
            if event == "connect":
                return await self._on_connect(sid, *args)
            return await self._on_disconnect(sid, *args)
        handler = self._handlers.get(event) if isinstance(event, str) else None
        if handler is None:
            return await self._on_unknown(event, sid, *args)
        return await handler(sid, *args)

    async def _on_connect(self, sid: str, environ: dict, auth_payload: object = None) -> None:
        if self.closing:
            raise socketio.exceptions.ConnectionRefusedError("server is shutting down")
        identity = None
        if self.options.auth_secret is not None:
            token = auth_payload.get("token") if isinstance(auth_payload, dict) else None
            try:
                identity = auth.verify_token(token, self.options.auth_secret)
            except auth.TokenError as exc:
                raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        conn = Conn(sid, identity, last_life=self._now())
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        out = FrameBatcher.of(environ.get("asgi.scope"))  # None: not a WebSocket
        if protocol.protocol_version(auth_payload) == protocol.PROTOCOL_V2:
            conn.watcher = self.subscriptions.add(sid, eio_sid, out)
        else:
            self.broadcaster.add(sid, eio_sid, out)
        self.conns[sid] = conn
        # python-socketio keeps every connection's WSGI-style environ for its lifetime;
        # nothing reads its headers after this, and they are a tenth of a connection's
        # memory (bench/bench_server.py, "per connection")
        kept = {
            key: value
            for key, value in environ.items()
            if not key.startswith("HTTP_") and key != "wsgi.input"  # (a class per request)
        }
        environ.clear()  # (frees the dict's table, which deleting keys would not)
        environ.update(kept)
        scope = kept.get("asgi.scope")
        if isinstance(scope, dict) and scope.get("type") == "websocket":
            scope["headers"] = []  # uvicorn's copy, kept as long: read once, above

    async def _on_disconnect(self, sid: str, reason: object = None) -> None:
        conn = self.conns.pop(sid, None)
        self.broadcaster.remove(sid)
        self.subscriptions.remove(sid)
        if conn is None or self.closing or conn.key is None or conn.stale:
            return
        ended = self._now()
        if self.options.grace > 0:
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle | None = None

            def fire() -> None:
                self._timers.discard(handle)
                self._spawn(self._release(conn, ended, "disconnect"))

            handle = loop.call_later(self.options.grace, fire)
            self._timers.add(handle)
        else:
            await self._release(conn, ended, "disconnect")

    def _wrap(self, event: str, handler: Callable[[Conn, object], Coroutine]):
        async def on_event(sid: str, *args: object) -> dict:
            self.stats["events"] += 1
            conn = self.conns.get(sid)
            if conn is None or self.closing:
                return {"ok": False, "error": "not connected"}
            try:
                if len(args) > 1:
                    raise ProtocolError(f"{event} takes one argument, got {len(args)}")
                ack = await handler(conn, args[0] if args else None)
            except ProtocolError as exc:
                return await self._refuse(sid, event, str(exc))
            except Exception:  # a bug of ours: say so to the sender, keep serving the rest
                log.exception("handling %s from %s failed", event, sid)
                return await self._refuse(sid, event, "internal error")
            return {"ok": True} if ack is None else ack

        return on_event

    async def _on_unknown(self, event: object, sid: str, *args: object) -> dict:
        self.stats["events"] += 1
        name = event if isinstance(event, str) else repr(event)
        return await self._refuse(sid, name, f"unknown event {name[:64]!r}")

    async def _refuse(self, sid: str, event: str, message: str) -> dict:
        self.stats["refused"] += 1
        await self.sio.emit(
            protocol.PRESENCE_ERROR, protocol.presence_error(event, message), to=sid
        )
        return {"ok": False, "error": message}

    # --- the events -------------------------------------------------------------------

    def _token_user(self, conn: Conn, event: str) -> str | None:
        if conn.identity is None:
            return None
        if conn.identity.expires_at <= time.time():
            raise Refused(f"{event}: token expired; reconnect with a new one")
        if conn.identity.observer:
            raise Refused(f"{event}: observers may watch but not announce users")
        return conn.identity.user_id

    def _own(self, conn: Conn, key: str, event: str) -> None:
        """Refuse an event about a user other than the one this connection announced."""
        if conn.key is None:
            raise Refused(f"{event}: announce the user with userOnline first")
        if key != conn.key:
            raise Refused(f"{event}: this connection speaks for user {conn.key!r}, not {key!r}")

    async def _user_online(self, conn: Conn, payload: object) -> None:
        token_user = self._token_user(conn, protocol.USER_ONLINE)
        event = protocol.parse_user_online(payload, default_id=token_user)
        if token_user is not None and event.key != token_user:
            raise Refused(f"userOnline: this connection's token is for user {token_user!r}")
        now = self._now()
        if event.key not in self.state.users:  # coming online is a status change
            self._limit(event.key, protocol.USER_ONLINE, now)
        if conn.key is not None and conn.key != event.key:
            await self._detach(conn, now, protocol.USER_OFFLINE)  # one connection, another user
        self.state.rename(event.key, event)
        self._touch(conn, now)
        await self._attach(conn, event.key, event.user_id, now, event)

    async def _user_offline(self, conn: Conn, payload: object) -> None:
        token_user = self._token_user(conn, protocol.USER_OFFLINE)
        ref = protocol.parse_user_offline(payload, default_id=token_user)
        self._own(conn, ref.key, protocol.USER_OFFLINE)
        await self._detach(conn, self._now(), protocol.USER_OFFLINE)  # never refused

    async def _user_heartbeat(self, conn: Conn, payload: object) -> None:
        token_user = self._token_user(conn, protocol.USER_HEARTBEAT)
        ref = protocol.parse_user_heartbeat(payload, default_id=token_user)
        self._own(conn, ref.key, protocol.USER_HEARTBEAT)
        conn.heartbeats = True
        await self._alive(conn)

    async def _user_status(self, conn: Conn, payload: object) -> None:
        token_user = self._token_user(conn, protocol.USER_STATUS)
        event = protocol.parse_user_status(payload, default_id=token_user)
        self._own(conn, event.key, protocol.USER_STATUS)
        now = await self._alive(conn, sighting=False)
        if self.state.status_of(event.key) != event.status:
            self._limit(event.key, protocol.USER_STATUS, now)
            await self.state.set_status(
                conn.sid, event.key, event.status, now, protocol.USER_STATUS
            )
        elif (user := self.state.users.get(event.key)) is not None:
            self.state.sighting(user)

    async def _get_online_users(self, conn: Conn, payload: object) -> None:
        protocol.parse_get_online_users(payload)
        if conn.key is not None:
            await self._alive(conn)
        await self.sio.emit(protocol.ONLINE_USERS_LIST, self.online_users(), to=conn.sid)

    async def _publish(self, user: User, status: str, moment: datetime, reason: str) -> None:
        """A transition, to everyone who hears of it: the guide's clients at once (one
        userStatusChanged each), version-2 watchers at the next tick."""
        if self.broadcaster.recipients:
            payload = protocol.status_changed(user.wire_id, status, moment, reason)
            await self.broadcaster.send(protocol.USER_STATUS_CHANGED, payload)
        if self.subscriptions.watchers:
            change = protocol.diff_change(
                user.wire_id,
                status,
                moment,
                reason,
                team=user.team,
                user_type=user.user_type,
                user_name=user.user_name,
            )
            self.subscriptions.publish(user.key, user.team, change)

    def _limit(self, key: str, event: str, now: datetime) -> None:
        """Refuse a status change beyond the user's rate, or one that would be dated
        further ahead of now than the clock rule allows."""
        if not self.limiter.allow(key, time.monotonic()):
            raise Refused(
                f"{event}: user {key!r} changes status too fast (limit: "
                f"{self.limiter.describe()}); this change was not applied"
            )
        if not self.state.admits(key, now):
            raise Refused(
                f"{event}: user {key!r} changes status more than once a millisecond; "
                "this change was not applied"
            )

    # --- which connection counts for whom ---------------------------------------------

    def _now(self) -> datetime:
        """Now by the database's clock, to the millisecond (the wire's precision)."""
        return protocol.to_millis(self.clock.now())

    def _touch(self, conn: Conn, now: datetime) -> None:
        conn.last_life = now
        conn.last_life_mono = time.monotonic()

    async def _alive(self, conn: Conn, *, sighting: bool = True) -> datetime:
        """A sign of life from an announced connection: it counts again if it had timed
        out; its user's last_seen advances."""
        now = self._now()
        self._touch(conn, now)
        assert conn.key is not None and conn.wire_id is not None
        if conn.stale:
            await self._attach(conn, conn.key, conn.wire_id, now, None)
        else:
            self.state.seen(conn.key, now, sighting=sighting)
        return now

    async def _attach(
        self,
        conn: Conn,
        key: str,
        wire_id: protocol.UserId,
        now: datetime,
        names: protocol.UserOnline | None,
    ) -> None:
        conn.key, conn.wire_id, conn.stale = key, wire_id, False
        await self.state.join(conn.sid, key, wire_id, now, names)

    async def _detach(self, conn: Conn, when: datetime, reason: str) -> None:
        """This connection no longer speaks for its user (explicit userOffline)."""
        key = conn.key
        conn.key, conn.wire_id, conn.stale, conn.heartbeats = None, None, False, False
        await self.state.part(key, conn.sid, when, reason)

    async def _release(self, conn: Conn, ended: datetime, reason: str) -> None:
        """A closed connection's grace period is over."""
        if not self.closing:
            await self.state.part(conn.key, conn.sid, ended, reason)

    async def _sweep(self) -> None:
        """Take connections silent past the heartbeat timeout out of their users'."""
        timeout = self.options.heartbeat_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 5))
            limit = time.monotonic() - timeout
            for conn in list(self.conns.values()):
                if conn.heartbeats and not conn.stale and conn.key and conn.last_life_mono < limit:
                    conn.stale = True
                    when = conn.last_life or self._now()
                    await self.state.part(conn.key, conn.sid, when, "timeout")

    async def _keep_clock(self, measured: asyncio.Event) -> None:
        """Measure the database's clock now and every ``clock_interval`` seconds, in a
        thread; say so once when it cannot be read, and once when it can again."""
        failing = False
        while True:
            try:
                offset = await asyncio.to_thread(self.clock.measure)
            except Exception as exc:
                if not failing:
                    log.warning(
                        "cannot read the database's clock (%s); times keep the last "
                        "measured offset (%s)",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        self.clock.offset,
                    )
                failing = True
            else:
                if failing:
                    log.info("database clock measured again: offset %s", offset)
                failing = False
            measured.set()
            await asyncio.sleep(self.options.clock_interval)

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reading the state ------------------------------------------------------------

    @property
    def users(self) -> dict:
        """The present users by key (read-only; see :mod:`presence_core.server.state`)."""
        return self.state.users

    def online_users(self) -> list[dict]:
        """The ``onlineUsersList`` payload (see :meth:`PresenceState.online_users`)."""
        return self.state.online_users(lambda sid: sid in self.conns)

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """``{user key: (status, connections counting for it)}`` (for tests and /health)."""
        return self.state.snapshot()

    def health(self) -> dict:
        cluster = {"cluster": self.cluster.health()} if self.cluster is not None else {}
        return {
            "connections": len(self.conns),
            "users": len(self.state.users),
            "closing": self.closing,
            "loop": self.loop_name,
            "database": self.writer is not None,
            "pending_writes": self.writer.pending() if self.writer else 0,
            **self.stats,
            "broadcasts": self.state.broadcasts,
            "transitions": self.state.transitions,
            "v2_connections": len(self.subscriptions.watchers),
            "diffs": self.subscriptions.diffs,
            "diffs_direct": self.subscriptions.direct,
            "broadcasts_direct": self.broadcaster.direct,
            "ws_frames": FrameBatcher.frames,
            "ws_writes": FrameBatcher.writes,
            "malformed_frames": self.wire.malformed.total,
            **self.web.guard.stats(),
            **cluster,
        }

    # --- running ----------------------------------------------------------------------

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Listen on ``host:port`` (0: any free port) and return the port.

        With a database, its clock is measured first (waiting at most two seconds:
        until it answers, this machine's clock stands in)."""
        self.loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
        if self.clock.engine is not None:
            measured = asyncio.Event()
            self._clock_task = asyncio.create_task(self._keep_clock(measured))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(measured.wait(), 2)
        if self.node_id is None and port != 0:
            self.node_id = default_node_id(host, port)
        if self.cluster is not None and self.node_id is not None:
            await self._start_cluster()  # in the cluster before the first client comes
        self.port = await self.web.start(host, port)
        if self.node_id is None:
            self.node_id = default_node_id(host, self.port)
            if self.cluster is not None:
                await self._start_cluster()
        if self.writer is not None:  # events queued before it runs are written when it does
            self.writer.start()
        if self.options.heartbeat_timeout > 0:
            self._sweeper = asyncio.create_task(self._sweep())
        self._differ = asyncio.create_task(self.watching.send_diffs())
        return self.port

    async def _start_cluster(self) -> None:
        assert self.cluster is not None and self.node_id is not None
        if self.writer is not None and self.engine is not None:  # one spool per node
            self.writer.use_spool(
                default_server_spool(self.engine.url, f"server-{route_tag(self.node_id)}")
            )
        await self.cluster.start()

    def begin_shutdown(self) -> None:
        """Stop acting on events: from now on, connections closing mean nothing."""
        self.closing = True
        self.web.request_exit()

    async def stop(self) -> None:
        """Shut down gracefully: no offline broadcast for anyone; pending writes flushed."""
        self.begin_shutdown()
        await self.web.wait()
        for task in (self._sweeper, self._clock_task, self._differ):
            if task is not None:
                task.cancel()
        for handle in list(self._timers):
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.sio.shutdown()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)

    async def serve(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        """Run until SIGTERM or SIGINT (a second SIGINT forces the exit)."""
        await self.start(host, port)
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if self.closing and sig == signal.SIGINT:
                self.web.request_exit(force=True)
            log.info("%s: shutting down (no one is marked offline)", sig.name)
            self.begin_shutdown()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        where = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        print(f"presence server listening on {where}", flush=True)
        await self.web.wait()
        await self.stop()
