"""Fan-out of the guide's broadcast: one event to every guide client, encoded once."""

from __future__ import annotations

import engineio
import socketio


class Broadcaster:
    """Sends an event to every guide (version 1) client of a python-socketio server.

    python-socketio's own ``emit`` to everyone starts a task per recipient; a
    straight loop over the engine.io sockets does the same work faster (see
    bench/bench_server.py), which matters because the guide's broadcast makes a
    storm of N logins cost N² deliveries. Version-2 clients are not in
    ``recipients``: they get diffs of what they watch instead
    (:mod:`presence_core.server.subscriptions`).
    """

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.recipients: dict[str, str] = {}  # Socket.IO sid -> engine.io sid, in order

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
        for eio_sid in list(self.recipients.values()):
            for part in packets:
                await send_packet(eio_sid, part)

    async def send_text(self, eio_sid: str, text: str) -> None:
        """One already-encoded Socket.IO packet (its text) to one client."""
        await self.sio.eio.send_packet(
            eio_sid, engineio.packet.Packet(engineio.packet.MESSAGE, text)
        )
