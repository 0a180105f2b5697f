"""Fan-out: one event to every connected client, encoded once."""

from __future__ import annotations

import engineio
import socketio


class Broadcaster:
    """Sends an event to every client of a python-socketio server's default namespace.

    python-socketio's own ``emit`` to everyone starts a task per recipient; a
    straight loop over the engine.io sockets does the same work faster (see
    bench/bench_server.py), which matters because the guide's broadcast makes a
    storm of N logins cost N² deliveries.
    """

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio

    async def send(self, event: str, data: object) -> None:
        pkt = self.sio.packet_class(socketio.packet.EVENT, namespace="/", data=[event, data])
        encoded = pkt.encode()
        packets = [
            engineio.packet.Packet(engineio.packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        for _sid, eio_sid in self.sio.manager.get_participants("/", None):
            for part in packets:
                await self.sio.eio.send_packet(eio_sid, part)
