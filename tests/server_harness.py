"""Running our presence server and real Socket.IO clients from synchronous tests.

An asyncio loop runs in a thread of its own (:class:`LoopThread`); the server
(uvicorn on a free 127.0.0.1 port) and the clients live on it, and tests wait on
conditions with :func:`tests.waiting.wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import socketio

from presence_core.server import PresenceServer, ServerOptions
from tests.waiting import wait_for


class LoopThread:
    """An event loop in a daemon thread; :meth:`run` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RunningServer:
    def __init__(self, loop: LoopThread, server: PresenceServer, port: int) -> None:
        self.loop, self.server, self.port = loop, server, port
        self.url = f"http://127.0.0.1:{port}"
        self.clients: list[Client] = []

    def client(self, **kwargs: Any) -> Client:
        """A connected client (kwargs: auth, reconnection)."""
        client = Client(self.loop, self.url, **kwargs)
        client.connect()
        self.clients.append(client)
        return client

    def v2_client(self, token: str | None = None, **kwargs: Any) -> Client:
        """A connected client speaking protocol version 2 (``protocol: 2`` in its auth)."""
        auth: dict[str, Any] = {"protocol": 2}
        if token is not None:
            auth["token"] = token
        return self.client(auth=auth, **kwargs)

    def snapshot(self) -> dict[str, tuple[str, int]]:
        return self.loop.run(_call(self.server.snapshot))

    def flush(self) -> None:
        """Wait until the server's database writer has written everything."""
        assert self.server.writer is not None
        assert self.server.writer.wait_idle(10), "database writes still pending"


async def _call(fn):
    return fn()


@contextmanager
def running_server(engine=None, **options: Any) -> Iterator[RunningServer]:
    """Our server on a free loopback port, with small test-friendly durations."""
    options.setdefault("grace", 0.3)
    options.setdefault("flush_interval", 0.05)
    loop = LoopThread()
    server = PresenceServer(engine, ServerOptions(**options))
    running = None
    try:
        port = loop.run(server.start("127.0.0.1", 0))
        running = RunningServer(loop, server, port)
        yield running
    finally:
        if running is not None:
            for client in running.clients:
                client.close()
        loop.run(server.stop(), timeout=20)
        loop.close()


class Client:
    """A python-socketio AsyncClient on the loop thread that records what it receives."""

    EVENTS = ("userStatusChanged", "onlineUsersList", "presenceError", "presenceDiff")

    def __init__(
        self, loop: LoopThread, url: str, auth: Any = None, reconnection: bool = False
    ) -> None:
        self.loop, self.url, self.auth = loop, url, auth
        self.sio = socketio.AsyncClient(reconnection=reconnection, handle_sigint=False)
        self.events: list[tuple[str, Any]] = []
        self.connect_error: Any = None
        for name in self.EVENTS:
            self.sio.on(name, self._recorder(name))
        self.sio.on("connect_error", self._on_connect_error)

    def _recorder(self, name: str):
        async def record(*args: Any) -> None:
            self.events.append((name, args[0] if len(args) == 1 else list(args)))

        return record

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    def connect(self) -> None:
        self.loop.run(
            self.sio.connect(self.url, transports=["websocket"], auth=self.auth, wait_timeout=10)
        )

    def emit(self, event: str, *args: Any) -> None:
        self.loop.run(self.sio.emit(event, args[0] if len(args) == 1 else tuple(args)))

    def emit_raw(self, event: str, *args: Any) -> None:
        """Emit with any number of arguments (zero included)."""
        self.loop.run(self.sio.emit(event, tuple(args) if args else None))

    def call(self, event: str, *args: Any, timeout: float = 10) -> Any:
        data = args[0] if len(args) == 1 else (tuple(args) if args else None)
        return self.loop.run(self.sio.call(event, data, timeout=timeout))

    def drop(self) -> None:
        """Lose the network: close the websocket without a goodbye."""

        async def close_ws() -> None:
            await self.sio.eio.ws.close()

        self.loop.run(close_ws())

    def disconnect(self) -> None:
        self.loop.run(self.sio.disconnect())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.loop.run(self.sio.disconnect(), timeout=5)

    def received(self, name: str) -> list[Any]:
        return [payload for event, payload in list(self.events) if event == name]

    def changes(self, user_id: Any = None) -> list[tuple[Any, str]]:
        """``(userId, status)`` of every userStatusChanged received (for one user)."""
        return [
            (p["userId"], p["status"])
            for p in self.received("userStatusChanged")
            if user_id is None or p["userId"] == user_id
        ]

    def wait_change(self, user_id: Any, status: str, timeout: float = 10) -> dict:
        def found() -> dict | None:
            for p in self.received("userStatusChanged"):
                if p["userId"] == user_id and p["status"] == status:
                    return p
            return None

        return wait_for(found, timeout, what=f"userStatusChanged {user_id} {status}")

    def online_list(self, timeout: float = 10) -> list[dict]:
        """Ask getOnlineUsers and return the answer."""
        before = len(self.received("onlineUsersList"))
        self.emit_raw("getOnlineUsers")
        wait_for(
            lambda: len(self.received("onlineUsersList")) > before, timeout, what="onlineUsersList"
        )
        return self.received("onlineUsersList")[before]

    def diffs(self) -> list[dict]:
        """Every presenceDiff received (protocol version 2), in order."""
        return self.received("presenceDiff")

    def diff_changes(self, user_id: Any = None) -> list[tuple[Any, str]]:
        """``(userId, status)`` of every change in the diffs received (for one user)."""
        return [
            (c["userId"], c["status"])
            for d in self.diffs()
            for c in d["changes"]
            if user_id is None or c["userId"] == user_id
        ]

    def wait_diff_change(self, user_id: Any, status: str, timeout: float = 10) -> dict:
        def found() -> dict | None:
            for d in self.diffs():
                for c in d["changes"]:
                    if c["userId"] == user_id and c["status"] == status:
                        return c
            return None

        return wait_for(found, timeout, what=f"presenceDiff change {user_id} {status}")

    def wait_error(self, count: int = 1, timeout: float = 10) -> dict:
        wait_for(
            lambda: len(self.received("presenceError")) >= count, timeout, what="presenceError"
        )
        return self.received("presenceError")[count - 1]
