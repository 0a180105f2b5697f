"""Fan-out of the guide's broadcast: one event to every guide client, encoded once."""

from __future__ import annotations

import engineio
import socketio

from presence_core.server.batching import FrameBatcher


class Broadcaster:
    """Sends an event to every guide (version 1) client of a python-socketio server.

    python-socketio's own ``emit`` to everyone starts a task per recipient; a
    straight loop over the engine.io sockets does the same work faster (see
    bench/bench_server.py), which matters because the guide's broadcast makes a
    storm of N logins cost N² deliveries. Each recipient's copy goes straight to its
    WebSocket's write batcher when engine.io holds nothing for it
    (:meth:`~presence_core.server.batching.FrameBatcher.send_now`, as a tick's
    diffs do), past engine.io's queue, writer task and timer: in an 800-user storm
    that took the server's CPU per delivered message from 9.1 to 5.2 µs. Version-2
    clients are not in ``recipients``: they get diffs of what they watch instead
    (:mod:`presence_core.server.subscriptions`).
    """

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        # Socket.IO sid -> (engine.io sid, its WebSocket's batcher or None), in order
        self.recipients: dict[str, tuple[str, FrameBatcher | None]] = {}
        self.direct = 0  # copies handed straight to a batcher, past engine.io's queue

    def add(self, sid: str, eio_sid: str, out: FrameBatcher | None) -> None:
        """A guide client to broadcast to (``out``: its batcher, None when polling)."""
        self.recipients[sid] = (eio_sid, out)

    def remove(self, sid: str) -> None:
        self.recipients.pop(sid, None)

    def encode(self, event: str, data: object) -> list[engineio.packet.Packet]:
        """``event`` with ``data`` as engine.io packets, ready for any socket."""
        pkt = self.sio.packet_class(socketio.packet.EVENT, namespace="/", data=[event, data])
        encoded = pkt.encode()
        return [
            engineio.packet.Packet(engineio.packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]

    async def send(self, event: str, data: object) -> None:
        packets = self.encode(event, data)
        send_packet = self.sio.eio.send_packet
        sockets = self.sio.eio.sockets
        # one text packet (no binary attachment) can go straight to a batcher
        text = (
            "4" + packets[0].data
            if len(packets) == 1 and isinstance(packets[0].data, str)
            else None
        )
        for eio_sid, out in list(self.recipients.values()):
            if text is not None and out is not None and out.send_now(text, sockets.get(eio_sid)):
                self.direct += 1
                continue
            for part in packets:
                await send_packet(eio_sid, part)

    async def send_text(self, eio_sid: str, text: str) -> None:
        """One already-encoded Socket.IO packet (its text) to one client."""
        await self.sio.eio.send_packet(
            eio_sid, engineio.packet.Packet(engineio.packet.MESSAGE, text)
        )
