"""One write for the frames a WebSocket has waiting, instead of one write per frame.

The guide's broadcast sends every change to every client; measured in a login
storm (bench/bench_server.py), the server then spends most of its time writing:
one ASGI ``websocket.send``, one WebSocket frame encoded and one ``send()``
system call per message per client. :class:`FrameBatcher` stands between the
app and uvicorn's WebSocket protocol: the text messages a connection is sent
during one turn of the event loop are framed and handed to the transport in one
write at the end of the turn, in order. A frame's bytes are computed once per
distinct message (a broadcast is the same text for every client) when the
connection compresses nothing.

It relies on uvicorn's ``websockets-sansio`` protocol object (its ``conn``, a
``websockets`` ServerProtocol, and its ``transport``); anything else, a paused
transport (a slow reader: its back-pressure is kept) or a closing connection
passes each message on as it is. Once the connection is accepted it also lets go of
the opening handshake's request and response, which uvicorn would keep for the
connection's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

try:  # websockets comes with uvicorn's WebSocket support (and streamlit)
    from websockets.frames import Frame
except ImportError:  # pragma: no cover - then uvicorn's own path, frame by frame
    Frame = None

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]

_SCOPE_KEY = "presence.batcher"  # where EdgeApp leaves a WebSocket's batcher in its scope
_FRAME_CACHE: OrderedDict[str, bytes] = OrderedDict()
_FRAME_CACHE_SIZE = 256
_CACHED_TEXT = 4096  # longer messages (online lists) are one client's: framed, not kept
_ONE_CLIENTS = '42["presenceDiff"'  # an Engine.IO message of a Socket.IO event


def _text_frame(text: str) -> bytes:
    """The final, unmasked, uncompressed WebSocket text frame of ``text`` (RFC 6455,
    5.2: the server's frames are never masked), the bytes websockets'
    ``Frame(Opcode.TEXT, data).serialize(mask=False)`` makes, in a quarter of its time
    (0.6 µs against 2.5 µs for a 1.7 kB diff: one per client per tick)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + data
    return b"\x81\x7f" + size.to_bytes(8, "big") + data


def _frame(text: str) -> bytes:
    """The WebSocket frame of ``text`` (:func:`_text_frame`).

    Kept for texts many clients get (a broadcast); a ``presenceDiff`` is one
    connection's (its ``seq``), so it is framed and not kept, where it would only push
    the broadcasts' frames out."""
    if len(text) > _CACHED_TEXT or text.startswith(_ONE_CLIENTS):
        return _text_frame(text)
    frame = _FRAME_CACHE.get(text)
    if frame is None:
        frame = _text_frame(text)
        _FRAME_CACHE[text] = frame
        if len(_FRAME_CACHE) > _FRAME_CACHE_SIZE:
            _FRAME_CACHE.popitem(last=False)
    return frame


class FrameBatcher:
    """Wraps one WebSocket connection's ASGI ``send``; use :meth:`send` in its place.

    ``FrameBatcher.writes`` and ``FrameBatcher.frames`` count, for the whole
    process, the transport writes made and the frames they carried (/health).
    """

    __slots__ = ("_send", "_proto", "_texts", "_scheduled", "_slow")  # one per connection
    writes = 0
    frames = 0
    SCOPE_KEY = _SCOPE_KEY

    _NEEDS = ("conn", "transport", "writable", "disconnected", "close_sent", "handshake_complete")

    def __init__(self, send: Send) -> None:
        self._send = send
        proto = getattr(send, "__self__", None)
        usable = (
            Frame is not None
            and proto is not None
            and all(hasattr(proto, name) for name in self._NEEDS)
        )
        self._proto = proto if usable else None
        self._texts: list[str] = []
        self._scheduled = False
        self._slow = 0  # messages on uvicorn's own path, not yet handed over

    def _batching(self) -> bool:
        proto = self._proto
        return (
            proto is not None
            and proto.handshake_complete
            and not proto.disconnected
            and not proto.close_sent
            and proto.writable.is_set()
        )

    def _queue(self, text: str) -> None:
        self._texts.append(text)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_now(self, text: str, engine_socket: object) -> bool:
        """Queue one already-encoded Engine.IO text packet for the end of this loop
        turn, past engine.io's per-socket queue and writer task, when that cannot
        reorder it: ``engine_socket`` (engine.io's socket of this connection) has
        nothing queued nor taken from its queue and not yet handed here, and this
        connection has no message on uvicorn's own (slow reader) path. False: not
        sent; send it the ordinary way.

        A version-2 client gets one diff a tick; through engine.io each costs a queue
        put, a task wake-up, a task and a timer for the writer's wait: most of the
        server's CPU per diff in a shift start (bench/bench_server_v2.py)."""
        if self._slow or not self._batching() or not _engine_idle(engine_socket):
            return False
        self._queue(text)
        return True

    async def send(self, message: dict) -> None:
        proto = self._proto
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (  # _batching(), inline: every broadcast to every guide client comes here
            text is not None
            and not self._slow
            and proto is not None
            and proto.handshake_complete
            and not proto.disconnected
            and not proto.close_sent
            and proto.writable.is_set()
        ):
            self._texts.append(text)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
            return
        self.flush()  # what waits goes first: order is kept
        self._slow += 1
        try:
            await self._send(message)
        finally:
            self._slow -= 1
        if proto is not None and message["type"] == "websocket.accept":
            # the opening handshake is over: its request and response (headers and
            # all, a sixth of a held connection's memory) are never read again
            request = proto.request
            proto.request = proto.response = None
            with contextlib.suppress(Exception):  # websockets' parser keeps the request too
                request.headers.clear()

    @classmethod
    def of(cls, scope: object) -> FrameBatcher | None:
        """The batcher of the WebSocket connection whose ASGI scope is ``scope``."""
        return scope.get(_SCOPE_KEY) if isinstance(scope, dict) else None

    def flush(self) -> None:
        """Write what waits, in one go."""
        self._scheduled = False
        if not self._texts:
            return
        texts, self._texts = self._texts, []
        proto = self._proto
        assert proto is not None
        if proto.disconnected or proto.close_sent or proto.transport.is_closing():
            return  # gone: the reading side tells the app
        try:
            conn = proto.conn
            if conn.extensions:  # compressed: the connection's own framing
                for text in texts:
                    conn.send_text(text.encode())
                data = b"".join(conn.data_to_send())
            else:
                data = b"".join([_frame(text) for text in texts])
            proto.transport.write(data)
        except Exception as exc:  # a connection failing under us: its reader will see it
            log.debug("batched write failed: %r", exc)
            return
        FrameBatcher.writes += 1
        FrameBatcher.frames += len(texts)


def _engine_idle(socket: object) -> bool:
    """Whether an engine.io socket's writer has nothing to write: its queue empty and
    every packet taken from it already handed on (asyncio.Queue counts a packet from
    ``put`` to ``task_done``, which engine.io's writer calls once it holds it; it then
    hands what it holds over without pausing while the batcher takes it)."""
    queue = getattr(socket, "queue", None)
    return (
        queue is not None
        and getattr(socket, "upgraded", False)
        and not getattr(socket, "closed", True)
        and not getattr(socket, "closing", True)
        and queue.empty()
        and getattr(queue, "_unfinished_tasks", 1) == 0
    )
