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
    from websockets.frames import Frame, Opcode
except ImportError:  # pragma: no cover - then uvicorn's own path, frame by frame
    Frame = Opcode = None

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]

_FRAME_CACHE: OrderedDict[str, bytes] = OrderedDict()
_FRAME_CACHE_SIZE = 256
_CACHED_TEXT = 4096  # longer messages (online lists) are one client's: framed, not kept


def _frame(text: str) -> bytes:
    """The unmasked, uncompressed WebSocket text frame of ``text`` (server → client)."""
    if len(text) > _CACHED_TEXT:
        return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    frame = _FRAME_CACHE.get(text)
    if frame is None:
        frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
        _FRAME_CACHE[text] = frame
        if len(_FRAME_CACHE) > _FRAME_CACHE_SIZE:
            _FRAME_CACHE.popitem(last=False)
    return frame


class FrameBatcher:
    """Wraps one WebSocket connection's ASGI ``send``; use :meth:`send` in its place.

    ``FrameBatcher.writes`` and ``FrameBatcher.frames`` count, for the whole
    process, the transport writes made and the frames they carried (/health).
    """

    __slots__ = ("_send", "_proto", "_texts", "_scheduled")  # one per connection
    writes = 0
    frames = 0

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

    async def send(self, message: dict) -> None:
        proto = self._proto
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (
            proto is not None
            and text is not None
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
        await self._send(message)
        if proto is not None and message["type"] == "websocket.accept":
            # the opening handshake is over: its request and response (headers and
            # all, a sixth of a held connection's memory) are never read again
            request = proto.request
            proto.request = proto.response = None
            with contextlib.suppress(Exception):  # websockets' parser keeps the request too
                request.headers.clear()

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
