"""The server's HTTP side: ``GET /health``, and uvicorn serving the whole ASGI app.

Socket.IO requests go to python-socketio; everything else comes here. Between
uvicorn and the app sit the connection guard (:mod:`presence_core.server.guard`)
and the wire log: whatever a client sends, the log grows by at most a line a
minute for each kind of complaint, never by a traceback per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import socket
import traceback
from collections.abc import Callable

import uvicorn

from presence_core.errors import PresenceError
from presence_core.server.batching import FrameBatcher
from presence_core.server.guard import Acceptor, ConnectionGuard, connection_cap
from presence_core.server.options import ServerOptions
from presence_core.server.ratelimit import LogThrottle

log = logging.getLogger("presence_core.server")

# uvicorn's sans-I/O WebSocket protocol (uvicorn 0.35 and later, with websockets): the
# one FrameBatcher can write through; older ones get uvicorn's choice, frame by frame
_WS_PROTOCOL = (
    "websockets-sansio"
    if importlib.util.find_spec("websockets") is not None
    and importlib.util.find_spec("uvicorn.protocols.websockets.websockets_sansio_impl") is not None
    else "auto"
)


class HealthApp:
    """An ASGI app: ``GET /health`` answers ``health()`` as JSON, anything else 404."""

    def __init__(self, health: Callable[[], dict]) -> None:
        self.health = health

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == "/health":
            status, body = 200, json.dumps(self.health()).encode()
        else:
            status, body = 404, b'{"error": "not found"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class WireLog(logging.Filter):
    """The log of what clients send that the libraries complain about.

    python-socketio and engine.io log through :attr:`logger`; uvicorn's error log
    is filtered while a server runs. Every warning or error they raise becomes one
    line the first time and one summary line a minute after that (per kind); an
    error with a traceback ("message async handler error" for a frame that is not
    Socket.IO…) counts as a malformed frame and is shown as one line naming the
    exception and where it was raised.
    """

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger("presence_core.server.wire")
        self.logger.setLevel(logging.WARNING)
        self.logger.addFilter(self)
        self.malformed = LogThrottle(log, "malformed frames")
        self._kinds: dict[tuple[str, object], LogThrottle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            self.frame_error(record.exc_info[1], record.getMessage())
            return False
        origin = "uvicorn" if record.name.startswith("uvicorn") else "Socket.IO"
        kind = self._kinds.get((origin, record.msg))
        if kind is None:
            kind = self._kinds[(origin, record.msg)] = LogThrottle(log, f"{origin} warnings")
        kind.hit(record.getMessage()[:200])
        return False

    def frame_error(self, exc: BaseException, context: str = "") -> None:
        """Count an exception raised while handling what a client sent."""
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        self.malformed.hit(
            f"{type(exc).__name__}: {text}{at}" + (f" ({context})" if context else "")
        )

    def flush(self) -> None:
        self.malformed.flush()
        for kind in self._kinds.values():
            kind.flush()


class EdgeApp:
    """The outermost ASGI app: tells the guard when a request starts and ends, and
    turns an exception escaping the app (engine.io's answer to a frame it cannot
    decode) into a counted line and a closed connection instead of a traceback."""

    def __init__(self, app: Callable, guard: ConnectionGuard, wire: WireLog) -> None:
        self.app, self.guard, self.wire = app, guard, wire

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = scope.get("client")
        self.guard.started(client)
        started = False
        # a WebSocket's frames waiting at the end of a loop turn leave in one write
        if scope["type"] == "websocket":
            batcher = FrameBatcher(send)
            scope[FrameBatcher.SCOPE_KEY] = batcher  # for direct diffs (watching.send_diffs)
            out = batcher.send
        else:
            out = send

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] in ("http.response.start", "websocket.accept")
            await out(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            self.wire.frame_error(exc, scope["type"])
            if scope["type"] == "http" and not started:
                body = b'{"error": "bad request"}'
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        finally:
            if scope["type"] == "http":
                self.guard.finished(client)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the caller installs handlers that
    first stop the presence logic, then the web server."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port); PresenceError when the
    address cannot be used (busy, not ours, not a port)."""
    if not 0 <= port <= 65535:
        raise PresenceError(f"cannot listen on port {port}: a port is a number from 0 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it (Linux): without it, an event followed by its ack
    # (two small writes) waits ~40 ms for the client's delayed ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog
    except OSError as exc:
        sock.close()
        raise PresenceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except (OverflowError, UnicodeError) as exc:  # not an address at all
        sock.close()
        raise PresenceError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


class WebServer:
    """uvicorn serving one ASGI app on one guarded socket, started and stopped from a
    running event loop (:meth:`start`, :meth:`request_exit`, :meth:`wait`).

    The caps and timeouts come from ``options`` (see :class:`ServerOptions`). uvicorn
    is given no socket of its own (``serve(sockets=[])``): the guard's
    :class:`Acceptor` accepts, and hands each admitted connection to uvicorn's
    protocol, as uvicorn's own server would, through the loop's
    ``connect_accepted_socket``; so the guard sees every connection under asyncio's
    loop and under uvloop alike (whose servers accept in C). uvicorn's main loop,
    its timeouts and its graceful shutdown are unchanged.
    """

    def __init__(self, app: Callable, options: ServerOptions, wire: WireLog) -> None:
        self.options = options
        self.wire = wire
        cap, why = connection_cap(options.max_connections)
        if why:
            log.warning("--max-connections: %s", why)
        per_address = options.max_per_address
        self.guard = ConnectionGuard(
            max_connections=cap,
            max_per_address=max(1, cap // 2) if per_address is None else per_address,
            header_timeout=options.header_timeout,
            idle_timeout=options.idle_timeout,
        )
        self.app = EdgeApp(app, self.guard, wire)
        self.port: int | None = None
        self._uvicorn: _Uvicorn | None = None
        self._task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._acceptor: Acceptor | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` and return the port once uvicorn accepts connections."""
        sock = listening_socket(host, port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=3,
            timeout_keep_alive=max(1, round(self.options.idle_timeout)),
            ws_max_size=self.options.max_message_bytes + 1024,
            proxy_headers=False,  # the guard knows connections by their real peer
            ws=_WS_PROTOCOL,  # the protocol FrameBatcher writes through, where it exists
            # as Node's socket.io: a compressing WebSocket holds zlib state for each
            # direction (hundreds of KiB) and compresses every broadcast once per client
            ws_per_message_deflate=False,
        )
        config.load()  # uvicorn's serve() would; the protocol class is needed before
        server = self._uvicorn = _Uvicorn(config)
        loop = asyncio.get_running_loop()

        def create_protocol() -> asyncio.Protocol:
            # what uvicorn's Server.startup gives loop.create_server
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=server.server_state,
                app_state=server.lifespan.state,
                _loop=loop,
            )

        async def serve(conn: socket.socket) -> None:
            await loop.connect_accepted_socket(create_protocol, conn)

        self._acceptor = Acceptor(sock, self.guard, serve)
        logging.getLogger("uvicorn.error").addFilter(self.wire)
        self._task = asyncio.create_task(server.serve(sockets=[]))  # no server of its own
        while not server.started:
            if self._task.done():
                self._restore()
                self._task.result()
                raise PresenceError("the web server stopped while starting")
            await asyncio.sleep(0.01)
        self._acceptor.start()
        self._sweeper = asyncio.create_task(self._sweep())
        return self.port

    def request_exit(self, *, force: bool = False) -> None:
        """Stop accepting and close connections gracefully (``force``: at once)."""
        if self._acceptor is not None:  # before uvicorn's shutdown waits for connections
            self._acceptor.close()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            if force:
                self._uvicorn.force_exit = True

    async def wait(self) -> None:
        """Until uvicorn has stopped (after :meth:`request_exit`)."""
        if self._task is not None:
            try:
                await self._task
            finally:
                self._restore()

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.options.header_timeout / 4, self.options.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.guard.sweep()

    def _restore(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._acceptor is not None:
            self._acceptor.close()
        logging.getLogger("uvicorn.error").removeFilter(self.wire)
        self.guard.flush_logs()
        self.wire.flush()
