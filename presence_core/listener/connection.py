"""The listener's Socket.IO connection to one server, kept up for as long as it takes.

:class:`ServerConnection` connects with jittered exponential backoff, tells what
arrives (connected, events, online lists, disconnected) to one callback in the
order it arrived, and notices a server that died silently. It decides nothing
about what arrives: that is the listener's.

It asks for protocol version 2 (``protocol: 2`` in its auth payload, which the
guide's servers ignore): :meth:`ServerConnection.watch` subscribes to everything
and asks the online list; a server that speaks version 2 acknowledges the
subscription (``subscribed``) and sends ``presenceDiff`` frames (``diff``), one
that does not (the guide's Node backend) answers only the list and broadcasts
``userStatusChanged`` as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import socketio

from presence_core import protocol
from presence_core.listener.decisions import backoff_delay
from presence_core.listener.metrics import Stats

log = logging.getLogger("presence.listener")

__all__ = ["ServerConnection"]

# arrive(kind, payload, at): kind is "connected" (payload: the client), "event",
# "diff", "snapshot" or "subscribed" (payload: the event's or acknowledgement's
# arguments) or "disconnected"; at None means now
Arrive = Callable[[str, object, datetime | None], None]


class ServerConnection:
    """A Socket.IO client on ``server_url`` that reconnects until stopped.

    ``arrive`` is called on the event loop for everything the server sends;
    ``now`` is the clock arrivals are dated by. ``stats`` counts events received,
    failed attempts and reconnects.
    """

    def __init__(
        self,
        server_url: str,
        arrive: Arrive,
        stats: Stats,
        *,
        now: Callable[[], datetime],
        token: str | None = None,
        transports: list[str] | None = None,
        retry_cap: float = 5.0,
    ) -> None:
        self.server_url = server_url
        self.arrive = arrive
        self.stats = stats
        self.now = now
        self.token = token
        self.transports = transports
        self.retry_cap = retry_cap
        self.protocol = protocol.PROTOCOL_V2  # asked for; 1 after a server refused it
        self._sio: socketio.AsyncClient | None = None

    @property
    def up(self) -> bool:
        """True while connected to the server."""
        return self._sio is not None

    async def ask_online_users(self, sio: socketio.AsyncClient | None = None) -> None:
        """Emit ``getOnlineUsers`` on ``sio`` (default: the current connection); the
        answer arrives as a ``snapshot``."""
        sio = sio or self._sio
        try:
            if sio is not None:
                await sio.emit("getOnlineUsers")
        except Exception as exc:  # a connection lost meanwhile; the next connect asks again
            log.info("event=ask_online_users_failed error=%r", str(exc))

    async def watch(self, sio: socketio.AsyncClient) -> None:
        """Right after connecting: ``subscribe {all: true}`` (when asking for version
        2), then ``getOnlineUsers``. A version-2 server acknowledges the first before
        it answers the second; the guide's servers answer only the second."""
        if self.protocol == protocol.PROTOCOL_V2:
            await self.subscribe(sio)
        await self.ask_online_users(sio)

    async def subscribe(self, sio: socketio.AsyncClient | None = None) -> None:
        """Emit ``subscribe {all: true}``; the acknowledgement arrives as ``subscribed``."""
        sio = sio or self._sio

        def acknowledged(*args: object) -> None:
            self.arrive("subscribed", args, None)

        try:
            if sio is not None:
                await sio.emit(protocol.SUBSCRIBE, {"all": True}, callback=acknowledged)
        except Exception as exc:  # a connection lost meanwhile; the next connect asks again
            log.info("event=subscribe_failed error=%r", str(exc))

    async def users_status(self, keys: list[str], timeout: float) -> list[dict] | None:
        """``getUsersStatus`` for ``keys`` (1,000 a call, the protocol's limit): the
        answer's entries, or None when there is no answer to trust (a server that does
        not know the event, a lost connection, a timeout)."""
        sio = self._sio
        entries: list[dict] = []
        for start in range(0, len(keys), 1000):
            if sio is None:
                return None
            try:
                ack = await sio.call(
                    protocol.GET_USERS_STATUS,
                    {"userIds": keys[start : start + 1000]},
                    timeout=timeout,
                )
            except Exception as exc:  # lost meanwhile, or no answer in time
                log.info("event=users_status_failed error=%r", str(exc))
                return None
            users = ack.get("users") if isinstance(ack, dict) else None
            if not isinstance(users, list):
                return None
            entries.extend(users)
        return entries

    async def drop(self) -> None:
        """Close the current connection (the run loop reconnects)."""
        if self._sio is not None:
            with contextlib.suppress(Exception):
                await self._sio.disconnect()

    async def run(self, stop: asyncio.Event, sleep: Callable[[float], object]) -> None:
        """Connect, stay connected, reconnect after a loss, until ``stop`` is set;
        ``sleep(seconds)`` waits between attempts (and wakes early when stopped)."""
        attempt = 0
        first = True
        while not stop.is_set():
            lost = asyncio.Event()
            sio = self._client(lost)
            try:
                await sio.connect(
                    self.server_url,
                    auth=self._auth(),
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
                await sleep(delay)
                continue
            if not first:
                self.stats.reconnects += 1
            first, attempt = False, 0
            self._sio = sio
            stop_wait = asyncio.create_task(stop.wait())
            lost_wait = asyncio.create_task(lost.wait())
            await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            lost_wait.cancel()
            if stop.is_set():
                with contextlib.suppress(Exception):
                    await sio.disconnect()
            await asyncio.sleep(0)  # let queued message tasks and the disconnect run
            self._sio = None
            if not stop.is_set():
                await sleep(backoff_delay(1, cap=self.retry_cap))

    def _auth(self) -> dict | None:
        auth: dict = {"token": self.token} if self.token else {}
        if self.protocol == protocol.PROTOCOL_V2:
            auth["protocol"] = protocol.PROTOCOL_V2
        return auth or None

    def _client(self, lost: asyncio.Event) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(
            reconnection=False, logger=False, engineio_logger=False, handle_sigint=False
        )
        loop = asyncio.get_running_loop()
        heard = _watch_packets(sio)

        def on_disconnect(*_reason):
            at = self.now()
            # A connection that died silently (no packet, not even the server's ping,
            # for well over a ping interval) was lost when last heard from, not when
            # the timeout noticed it: never overstate presence.
            interval = getattr(sio.eio, "ping_interval", None) or 25.0
            silent = time.monotonic() - heard[0]
            if heard[0] and silent > 1.5 * interval:
                at -= timedelta(seconds=silent)
            lost.set()
            # after the message tasks already scheduled, so no event overtakes it
            loop.call_soon(self.arrive, "disconnected", None, at)

        def on_status_changed(*args):
            at = self.now()
            self.stats.events_received += 1
            self.stats.last_event_at = at
            self.arrive("event", args, at)

        sio.on("connect", lambda: self.arrive("connected", sio, None))
        sio.on("disconnect", on_disconnect)
        sio.on("userStatusChanged", on_status_changed)
        sio.on("onlineUsersList", lambda *args: self.arrive("snapshot", args, None))

        def on_diff(*args):
            at = self.now()
            self.stats.diffs_received += 1
            self.stats.last_event_at = at
            self.arrive("diff", args, at)

        sio.on(protocol.PRESENCE_DIFF, on_diff)
        return sio


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
